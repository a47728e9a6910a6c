"""Datasets in LeRobot's format v3.0: the recording clock's alignment rule, a writer, a reader, a bag importer.

Nothing here imports rclpy; the recorder node and the rosbag2 importer feed these modules.
"""
