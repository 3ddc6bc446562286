"""The benchmark harness behind ``python -m rawtransport bench``.

``bench codec`` (:mod:`rawtransport.bench.codec`) times the pure-Python packet codec per frame.
"""
