"""Test-session set-up shared by every test.

TensorFlow's device list and thread pools can only be configured before the runtime starts, so
this happens once here: two logical CPU devices (for MirroredStrategy tests) and the thread
counts measured best on the 2-core CI machine. The strided-conv measurement cache
(`tbkeras.models.strided_conv`) goes to a directory of this session, never the user's home.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ["TBKERAS_CACHE_DIR"] = tempfile.mkdtemp(prefix="tbkeras_cache_")
atexit.register(shutil.rmtree, os.environ["TBKERAS_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(2)
