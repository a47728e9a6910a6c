"""pip install . -- the ROS-free part of hlrp_ros (model, control math, demo world, tools).

The ROS 2 package itself is built by ament_cmake (CMakeLists.txt), because it generates
the ActionChunk message; colcon never runs this file. This one serves people who train,
evaluate offline or benchmark the model without ROS. Modules that need rclpy (nodes,
graph) are included but import it only when used.
"""

from setuptools import find_packages, setup

setup(
    name="hlrp_ros",
    version="0.1.0",
    description="HLRP action expert: a language-conditioned flow-matching VLA policy, ROS 2 ready",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["hlrp_ros", "hlrp_ros.*"]),
    include_package_data=True,
    package_data={"hlrp_ros": ["**/*.json", "**/*.safetensors", "**/*.txt", "**/*.md"]},
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0,<6",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "diffusers>=0.41",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pyyaml>=6",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7"],
        # LeRobot v3.0 datasets (parquet, per-camera video) and the rosbag2 importer
        "datasets": ["pyarrow>=14", "av>=12", "rosbags>=0.10"],
        # the Meta-World MT10 world (gymnasium needs packaging and does not declare it)
        "metaworld": ["metaworld==3.1.1", "packaging"],
    },
)
