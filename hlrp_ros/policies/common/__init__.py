"""Pieces shared by every action-expert family."""
