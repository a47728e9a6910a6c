"""ROS-free policy code (torch + transformers): action experts, their configs and loaders."""
