"""Servers measured beside wr in the same run, so that ratios hold.

- :mod:`bench.baselines.bare`: uvloop + httptools answering one fixed
  response: the most any Python server on this loop can do;
- :mod:`bench.baselines.starlette_app`: wr's join, status and verify written
  the way most people would, with uvicorn, Starlette and pyjwt.
"""
