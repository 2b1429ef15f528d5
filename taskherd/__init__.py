"""taskherd: a distributed task system of supervised pykka actors over NSQ, Redis and MySQL."""

__version__ = "0.1.0"
