"""ROS-free, torch-free control math for executing action chunks.

* ``chunk``: a timed chunk (actions with due times) and time indexing.
* ``executor``: which action is due now; switching to newer chunks and blending over the overlap.
* ``limits``: position clamping, velocity limiting and ramping over chunk seams.
* ``watchdog``: chunk timeout and the controller's run/hold state, reported once per change.
* ``ticks``: skip-and-count accounting of timer ticks that land while inference is still running.
"""
