"""Mesh identity: the CA and its certificates (`ca`), SPIFFE checks (`spiffe`, pure), and the mTLS
contexts with rotation (`tls`). `certs_cli` is `pysidecar certs`. Authorization lives in
`sidecar.policy`. Each module's docstring lists the calls the data path makes.
"""
