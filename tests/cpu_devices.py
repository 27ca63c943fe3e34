"""Runs a script on N logical CPU devices, so that distributed training can be tested without GPUs:

    python tests/cpu_devices.py 2 scripts/train.py --distribute mirrored ...

TensorFlow fixes its devices when first used, so they are split here, before the script starts.
A test hook, kept out of the library.
"""

import runpy
import sys


def split_cpu(n: int) -> None:
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)


if __name__ == "__main__":
    split_cpu(int(sys.argv[1]))
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
