#!/usr/bin/env bash
# The test suite, with the environment the ROS tests need (Fast DDS shared memory with segments
# large enough for camera images, and a private ROS domain so parallel runs do not cross-talk).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export FASTDDS_BUILTIN_TRANSPORTS=${FASTDDS_BUILTIN_TRANSPORTS:-'SHM?max_msg_size=4MB&sockets_size=16MB'}
# A random domain of its own (not the shell's ROS_DOMAIN_ID, which may be a robot's), or
# LLMSEG_TEST_DOMAIN_ID; test/ros_helpers.py keeps the one it is given.
export ROS_DOMAIN_ID=${LLMSEG_TEST_DOMAIN_ID:-$(( (RANDOM % 100) + 100 ))}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# One thread per process: the node and the test run side by side on 2 cores, and OpenMP threads
# fighting for a busy core make small models 20x slower (measured: tiny DINOv2 18 ms vs 390 ms).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# The launch_testing pytest plugins (present wherever ROS 2 is installed) abort pytest >= 8.4 runs
# in Jazzy and Kilted < launch 3.8.9 before anything is collected.
exec "$VENV/bin/python" -m pytest -q -p no:launch_testing -p no:launch_ros "$@"
