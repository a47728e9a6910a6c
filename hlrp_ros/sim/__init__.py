"""ROS-free demo world: planar arm, top-down renderer, scripted expert, instructions."""
