"""deploy.local's ServiceManager on the real services: a service that cannot start says why in one
line of its log, and Redis is probed without redis-py (only taskherd.store speaks it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from taskherd.config import from_dict
from taskherd.deploy.local.services import ServiceManager, _redis_ping
from taskherd.errors import ServiceError
from tests.local_up import up_settings


def test_a_service_that_cannot_start_says_why_in_one_line(service_binaries: dict[str, str],
                                                          tmp_path: Path) -> None:
    # Given an nsqd running on a data dir
    first = ServiceManager(up_settings(), tmp_path)
    first.start_one("nsqd")
    try:
        # When another nsqd, on other ports, is started on the same data dir
        second = ServiceManager(up_settings(), tmp_path)
        with pytest.raises(ServiceError) as raised:
            second.start_one("nsqd")
    finally:
        first.stop()
    # Then the error's first line carries nsqd's own reason, and no 20-line tail follows it
    message = str(raised.value).splitlines()
    assert "failed to lock data-path" in message[0], message
    assert len(message) <= 2, message


def test_services_ping_redis_without_redis_py() -> None:
    # Only taskherd.store may import redis-py
    script = "import sys, taskherd.deploy.local.services; print('redis' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_a_redis_with_a_password_is_probed_with_auth(service_binaries: dict[str, str],
                                                     tmp_path: Path) -> None:
    # Given settings with a Redis password
    data = up_settings().model_dump()
    data["redis"]["password"] = "s3cret"
    manager = ServiceManager(from_dict(data), tmp_path)
    try:
        # When Redis is started, Then the probe authenticates and sees it answer
        manager.start_one("redis")
        # And a wrong password is "not answering", naming Redis's reply
        with pytest.raises(ServiceError, match="WRONGPASS"):
            _redis_ping(data["redis"]["port"], "wrong")
    finally:
        manager.stop()
