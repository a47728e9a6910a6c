"""hlrp_ros: the HLRP action expert on ROS 2.

Under colcon this file is replaced by the one rosidl generates. Run from the source
tree, it joins the built package's directory (``hlrp_ros/msg`` from ``colcon build``)
to this one, so ``from hlrp_ros.msg import ActionChunk`` works there too.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
