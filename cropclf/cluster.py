"""Several machines: `tf.distribute.MultiWorkerMirroredStrategy` from ``TF_CONFIG``, made safe to start.

TensorFlow does the cluster work (rendezvous, collectives, variable broadcast); this module adds what a
user needs around it:

- `read_tf_config` checks ``TF_CONFIG`` before TensorFlow starts and names what is wrong with it;
- `supervise` runs the training command in a child process and bounds its wait for the cluster:
  TensorFlow's rendezvous blocks in C++ holding the GIL, for ever, and its coordination agent catches
  SIGTERM, so neither a time-out nor a signal can be handled inside that process. The parent imports
  no TensorFlow; it waits for the child to say "connected", else names the unreachable addresses;
- `broadcast_files` copies the chief's resume files to the other workers through a collective, so that
  non-chief workers keep nothing on disk between runs.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from cropclf.errors import ConfigError, CropclfError

class ClusterError(CropclfError):
    """The cluster of ``TF_CONFIG`` cannot form, or lost a worker: an environment problem, not a bug."""


ENV_CHILD = "CROPCLF_CLUSTER_FD"  # set in the supervised child: the pipe it reports "connected" on


def read_tf_config() -> dict:
    """``TF_CONFIG`` parsed and checked: a cluster of ``chief``/``worker`` tasks and this task in it."""
    text = os.environ.get("TF_CONFIG")
    usage = ('set it on each host to JSON like {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
             '"task": {"type": "worker", "index": 0}}')
    if not text or not text.strip():
        raise ConfigError(f"--distribute multiworker needs the environment variable TF_CONFIG; {usage}. "
                          f"Received: TF_CONFIG unset")
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}); {usage}. "
                          f"Received: TF_CONFIG={text[:200]!r}") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    jobs = {k: v for k, v in cluster.items() if k in ("chief", "worker")} if isinstance(cluster, dict) else {}
    if not jobs or not all(isinstance(v, list) and v and all(isinstance(a, str) and _port(a) for a in v)
                           for v in jobs.values()):
        raise ConfigError(f"TF_CONFIG needs \"cluster\" with a non-empty list of \"host:port\" addresses "
                          f"under \"worker\" (and optionally one under \"chief\"); {usage}. "
                          f"Received: TF_CONFIG={text[:200]!r}")
    if len(jobs.get("chief", [])) > 1:
        raise ConfigError(f"TF_CONFIG's cluster may have one chief. Received: TF_CONFIG={text[:200]!r}")
    if not isinstance(task, dict) or task.get("type") not in jobs or isinstance(task.get("index"), bool) \
            or not isinstance(task.get("index"), int) or not 0 <= task["index"] < len(jobs[task["type"]]):
        raise ConfigError(f"TF_CONFIG's \"task\" must name this host's entry in the cluster, e.g. "
                          f"{{\"type\": \"worker\", \"index\": 0}} for the first address under \"worker\". "
                          f"Received: TF_CONFIG={text[:200]!r}")
    return tf_config


def _port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def tasks(tf_config: dict) -> list[tuple[str, int, str]]:
    """Every ``(type, index, address)`` of the cluster, chief first."""
    cluster = tf_config["cluster"]
    return [(job, i, a) for job in ("chief", "worker") for i, a in enumerate(cluster.get(job, []))]


def describe_task(tf_config: dict) -> str:
    task = tf_config["task"]
    return f"{task['type']} {task['index']} of {len(tasks(tf_config))}"


# --- the supervising parent --------------------------------------------------------------------


def supervise(argv: list[str], timeout: float, log=print) -> int:
    """Runs ``argv`` (this same command) as the worker process and returns its exit status.

    Fails with a `CropclfError` naming ``TF_CONFIG`` and the addresses that do not answer if the
    worker has not joined the cluster within ``timeout`` seconds. SIGTERM and SIGINT end the worker.
    """
    tf_config = read_tf_config()
    read_end, write_end = os.pipe()
    package_root = str(Path(__file__).resolve().parents[1])  # `-m cropclf` finds this copy of cropclf
    env = {**os.environ, ENV_CHILD: str(write_end),
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen(argv, env=env, pass_fds=(write_end,))
    os.close(write_end)

    def stop(signum, frame):
        _end(child)
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        deadline = time.monotonic() + timeout
        connected = False
        while not connected and child.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                _end(child)
                raise ClusterError(_unreachable_message(tf_config, timeout))
            ready, _, _ = select.select([read_end], [], [], min(left, 0.5))
            if ready:
                said = os.read(read_end, 16)
                if not said:  # the child closed the pipe unsaid: it is ending, its status tells
                    break
                connected = said == b"connected"
        code = child.wait()
        return 128 - code if code < 0 else code  # killed by a signal: the shell's convention
    finally:
        os.close(read_end)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _end(child: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL: a worker still waiting for its peers ignores SIGTERM (TensorFlow's handler)."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _unreachable_message(tf_config: dict, timeout: float) -> str:
    me = (tf_config["task"]["type"], tf_config["task"]["index"])
    down = [f"{job} {i} at {address}" for job, i, address in tasks(tf_config)
            if (job, i) != me and not _answers(address)]
    who = ("cannot reach " + ", ".join(down)) if down else "the cluster did not form (every address answers)"
    return (f"TF_CONFIG: {describe_task(tf_config)} {who} within {timeout:g} s; start the same command on "
            f"every host of TF_CONFIG's cluster (train.peer_timeout sets the wait). "
            f"Received: TF_CONFIG cluster {json.dumps(tf_config['cluster'])}")


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except OSError:
        return False


def lost_peer(error: BaseException, run_dir: Path | None) -> ClusterError:
    """The one-line error for a worker that lost its cluster while training (a peer died or left)."""
    text = " ".join(str(getattr(error, "message", error)).split())
    if text.startswith("{{"):  # TensorFlow prefixes the op's function node: not for users
        text = text.partition("}}")[2].strip()
    keeps = f"{run_dir} keeps" if run_dir is not None else "the chief's run directory keeps"
    return ClusterError(f"TF_CONFIG: a worker of the cluster stopped or cannot be reached, so training stopped "
                        f"here too; {keeps} the last completed epoch: start the same command on every host again "
                        f"to resume. Received: {type(error).__name__}: {text[:300]}")


# --- in the worker -----------------------------------------------------------------------------


def report_connected() -> None:
    """Tells the supervising parent that the cluster formed; SIGTERM ends this process again.

    TensorFlow's coordination agent installs a SIGTERM handler that only logs; the default action is
    restored so that a scheduler (or the parent) can stop a worker. A killed worker resumes from its
    last committed epoch like a killed single-host run.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    fd = os.environ.pop(ENV_CHILD, None)
    if fd is not None:
        try:
            os.write(int(fd), b"connected")
            os.close(int(fd))
        except OSError:
            pass


def is_chief(strategy) -> bool:
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker"
                                             and resolver.task_id == 0)


def worker_shard(strategy) -> tuple[int, int]:
    """``(index, count)`` of this worker among the workers that train (the chief, if any, is index 0)."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return 0, 1
    spec = resolver.cluster_spec().as_dict()
    chiefs = len(spec.get("chief", []))
    index = resolver.task_id if resolver.task_type == "chief" else chiefs + resolver.task_id
    return index, chiefs + len(spec.get("worker", []))


def broadcast_files(strategy, root: Path, names: list[str] | None) -> dict[str, bytes]:
    """The chief's files ``root/name`` (``names`` on the chief, ignored elsewhere), on every worker.

    One all-reduce in which only the first replica (on the chief) contributes: a broadcast through
    the strategy's own collectives. Missing files are left out.
    """
    import numpy as np

    blob = b""
    if names is not None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name in names:
                if (root / name).is_file():
                    tar.add(root / name, arcname=name)
        blob = buffer.getvalue()
    size = int(_from_first_replica(strategy, np.array([len(blob)], np.int64))[0])
    padded = np.zeros(-(-size // 4) * 4, np.uint8)
    padded[:len(blob)] = np.frombuffer(blob, np.uint8)
    words = _from_first_replica(strategy, padded.view(np.int32)) if size else np.zeros(0, np.int32)
    data = words.astype(np.int32).view(np.uint8).tobytes()[:size]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def sum_over_workers(strategy, values) -> list[int]:
    """The sum over the workers of each worker's integers ``values`` (its first replica contributes)."""
    import numpy as np
    import tensorflow as tf

    local = strategy.num_replicas_in_sync // worker_shard(strategy)[1]
    value = np.asarray(values, np.int64)

    def contribute():
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group % local, 0)
        return tf.where(first, tf.constant(value), tf.zeros_like(tf.constant(value)))

    return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribute), axis=None).numpy().tolist()


def _from_first_replica(strategy, value):
    import tensorflow as tf

    def contribute():
        ctx = tf.distribute.get_replica_context()
        first = tf.equal(ctx.replica_id_in_sync_group, 0)
        return tf.where(first, tf.constant(value), tf.zeros_like(tf.constant(value)))

    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribute), axis=None)
    return total.numpy()


def restart_in_child(argv: list[str] | None = None) -> list[str]:
    """``cropclf train`` with this command's flags, to run as the supervised worker."""
    return [sys.executable, "-m", "cropclf", "train", *(sys.argv[1:] if argv is None else argv)]


def fix_keras_fit(model, strategy) -> None:
    """Lets Keras 3's TensorFlow trainer ``fit`` under a multi-worker strategy (tensorflow/tensorflow#72388).

    Keras (3.15) fails there twice: building the model, it averages a peeked data batch with
    ``strategy.reduce`` on the whole nested batch (``unsupported type PerReplica to a Tensor``), and
    it averages each step's metrics with ``strategy.reduce(..., axis=0)``, which fails on scalars.
    Here the build takes its shapes from this worker's first replica (no collective: only shapes
    matter), and metrics are averaged over all replicas of all workers with ``axis=None``, as Keras
    averages them over one host's replicas, so every worker logs the same values (and its callbacks
    decide alike). Nothing changes for other strategies.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    if not getattr(trainer.reduce_per_replica, "cropclf_fix", False):
        original = trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
                return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
            return original(values, strategy, reduction)

        reduce_per_replica.cropclf_fix = True
        trainer.reduce_per_replica = reduce_per_replica

    build = model._maybe_symbolic_build

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                peeked = next(batches)
                data_batch = tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], peeked)
                break
        return build(data_batch=data_batch)

    model._maybe_symbolic_build = symbolic_build
