"""taskherd tests; a package so that `from tests.helpers import wait_until` works."""
