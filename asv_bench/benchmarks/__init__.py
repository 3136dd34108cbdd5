"""attnref's airspeed-velocity suite: every backend against the reference and the usual baselines.

See ``common`` for the implementations, the grid switches and the memory probe,
``baselines`` for what the backends are compared with.
"""
