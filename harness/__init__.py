"""The test and benchmark harness: real parts for tests, the soak and the benchmarks (not shipped).

- ``harness.emulator``: the Encord emulator as a subprocess (``RunningEmulator``), keys, raw signed
  requests, ``encord://`` storage options;
- ``harness.mount``: a real encordfs mount in a child process that is always unmounted and reaped
  (``MountedFS``, ``temporary_mount``), and the ``encordfs`` command run to its end (``encordfs_cli``);
- ``harness.http``: a range-capable byte server with fault injection, playing the bucket behind signed
  URLs (``ByteServer``), and a fake clock;
- ``harness.fakes``: in-process fakes and record builders for core tests, and a catalog made to look
  as an older version left it;
- ``harness.dirents``: ``getdents64`` with a small buffer, to check resumable listings;
- ``harness.scenarios``: the soak's scenarios (bytes under faults, kill -9, network loss, hostile
  input, concurrency), which the tests run in short forms and ``benchmarks/soak`` in full.

Tests, ``benchmarks/`` and ``benchmarks/soak`` import this package; nothing in ``encordfs`` does.
"""
