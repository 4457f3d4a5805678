import numpy as np
import pytest
import tensorflow as tf

from tbkeras.data import sampling


def _seed(i):
    return tf.constant([i, 7], tf.int64)


def _start(indices, num_frames):
    # The sampler's random start is its first index (before loop-padding it is < num_frames).
    return int(np.asarray(indices).reshape(-1)[0])


# Independent numpy references, written from the spec rather than from the implementation.
def ref_ssl(start, num_frames, n, length):
    span = np.arange(start, start + n * length)
    local = [span[t * length:(t + 1) * length] for t in range(n)]
    global_ = span[::n][:length]
    return np.stack(local) % num_frames, global_ % num_frames


def ref_supervised(start, num_frames, length, stride):
    if num_frames < (length - 1) * stride + 1:
        stride = 1
    return np.array([start + stride * i for i in range(length)]) % num_frames


def ref_evenly_spaced(num_frames, num_clips, length, stride):
    if num_frames < (length - 1) * stride + 1:
        stride = 1
    span = (length - 1) * stride + 1
    last = max(num_frames - span, 0)
    starts = [int(np.floor(k * last / max(num_clips - 1, 1))) for k in range(num_clips)]
    return np.array([[s + stride * i for i in range(length)] for s in starts]) % num_frames


@pytest.mark.parametrize("num_frames", [100, 64, 63, 20, 1])
def test_ssl_span_matches_reference_and_aligns(num_frames):
    n, length = 4, 16
    starts = set()
    for i in range(12):
        local, global_ = sampling.ssl_span(tf.constant(num_frames), _seed(i), num_clips=n, clip_length=length)
        local, global_ = local.numpy(), global_.numpy()
        start = _start(local, num_frames)
        starts.add(start)
        assert 0 <= start <= max(num_frames - n * length, 0)
        ref_local, ref_global = ref_ssl(start, num_frames, n, length)
        np.testing.assert_array_equal(local, ref_local)
        np.testing.assert_array_equal(global_, ref_global)
        # Global frames [t*L/n, (t+1)*L/n) lie inside local clip t (the L_D2 alignment).
        for k in range(length):
            assert global_[k] in local[k * n // length]
    if num_frames > 80:
        assert len(starts) > 1  # the start really is random
    if num_frames < n * length:
        assert starts == {0}


def test_ssl_global_clip_of_its_own_length_stays_aligned():
    n, length, glen = 4, 8, 16  # the global clip: 16 frames at stride 2 over the 32-frame span
    local, global_ = sampling.ssl_span(tf.constant(100), _seed(3), num_clips=n, clip_length=length,
                                       global_length=glen)
    local, global_ = local.numpy(), global_.numpy()
    start = local[0, 0]
    np.testing.assert_array_equal(global_, start + 2 * np.arange(glen))
    for k in range(glen):
        assert global_[k] in local[k * n // glen]  # slice t of the global clip lies in local clip t
    for bad in (12, 6, 0):  # must divide the span and be a multiple of n
        with pytest.raises(ValueError, match="global clip length"):
            sampling.ssl_span(tf.constant(100), _seed(0), num_clips=n, clip_length=length, global_length=bad)


def test_ssl_loop_pads_short_video():
    local, global_ = sampling.ssl_span(tf.constant(20), _seed(0), num_clips=4, clip_length=16)
    flat = local.numpy().reshape(-1)
    np.testing.assert_array_equal(flat[:20], np.arange(20))
    np.testing.assert_array_equal(flat[20:40], np.arange(20))
    np.testing.assert_array_equal(global_.numpy(), (4 * np.arange(16)) % 20)


@pytest.mark.parametrize("num_frames,expected_stride", [(50, 2), (15, 2), (14, 1), (8, 1), (5, 1)])
def test_supervised_clip(num_frames, expected_stride):
    for i in range(8):
        got = sampling.supervised_clip(tf.constant(num_frames), _seed(i), clip_length=8, stride=2).numpy()
        start = _start(got, num_frames)
        span = 7 * expected_stride + 1
        assert 0 <= start <= max(num_frames - span, 0)
        np.testing.assert_array_equal(got, ref_supervised(start, num_frames, 8, 2))
    if num_frames == 5:
        np.testing.assert_array_equal(got, [0, 1, 2, 3, 4, 0, 1, 2])


def test_supervised_clip_is_seeded():
    a = sampling.supervised_clip(tf.constant(200), _seed(3)).numpy()
    b = sampling.supervised_clip(tf.constant(200), _seed(3)).numpy()
    np.testing.assert_array_equal(a, b)
    others = {tuple(sampling.supervised_clip(tf.constant(200), _seed(i)).numpy()) for i in range(10)}
    assert len(others) > 1


@pytest.mark.parametrize("num_frames,num_clips,length,stride", [
    (100, 4, 16, 1),   # TSTR: 4 clips of 16 consecutive frames
    (300, 10, 8, 2),   # eval: 10 clips of 8 frames at stride 2
    (12, 10, 8, 2),    # too short for stride 2: stride 1
    (5, 3, 8, 2),      # shorter than a clip: loop-pad
    (40, 1, 8, 2),
])
def test_evenly_spaced_clips(num_frames, num_clips, length, stride):
    got = sampling.evenly_spaced_clips(
        tf.constant(num_frames), num_clips=num_clips, clip_length=length, stride=stride).numpy()
    np.testing.assert_array_equal(got, ref_evenly_spaced(num_frames, num_clips, length, stride))
    if num_frames >= (length - 1) * stride + 1 and num_clips > 1:
        assert got[0, 0] == 0 and got[-1, -1] == num_frames - 1  # first to last frame


def test_samplers_run_in_a_dataset_map():
    ds = tf.data.Dataset.from_tensor_slices([30, 100]).map(
        lambda n: sampling.ssl_span(n, tf.constant([1, 2], tf.int64), num_clips=2, clip_length=4))
    shapes = [(a.shape, b.shape) for a, b in ds]
    assert shapes == [((2, 4), (4,))] * 2
