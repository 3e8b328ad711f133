"""sim2real: the same observation/action contract on a real robot, over ROS 2.

``messages`` (ROS 2 types as dataclasses) and ``convert`` (numpy), ``transports`` (rclpy, a
pure-DDS backend on cyclonedds, in-memory), ``config`` (robot YAML files), ``safety``
(limits, watchdog, e-stop), ``robot_env`` (``RosRobotEnv``), ``bridge`` (a MuJoCo env served as
a ROS 2 robot) and ``deploy`` (a policy on the robot at a fixed rate, with recording).
Nothing here imports ROS 2 or cyclonedds until a transport is made.
"""
