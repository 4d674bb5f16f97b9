"""`native_stderr_silenced` redirects the process's fd 2: overlapping uses from threads (a server's store watcher
loading a version while requests run) must leave fd 2 where it was, and silence only while one is open."""
import os
import threading

from cassava.shared.native import native_stderr_silenced


def test_overlapping_uses_from_threads_restore_fd_2():
    before = os.readlink("/proc/self/fd/2")
    inside = []

    def work():
        for _ in range(200):
            with native_stderr_silenced():
                inside.append(os.readlink("/proc/self/fd/2"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert os.readlink("/proc/self/fd/2") == before
    assert set(inside) == {os.devnull}


def test_nested_uses_restore_only_at_the_outermost():
    before = os.readlink("/proc/self/fd/2")
    with native_stderr_silenced():
        with native_stderr_silenced():
            assert os.readlink("/proc/self/fd/2") == os.devnull
        assert os.readlink("/proc/self/fd/2") == os.devnull
    assert os.readlink("/proc/self/fd/2") == before
