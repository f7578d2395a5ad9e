"""Leaked-key reports (§17) from GitHub's secret scanning partner program: verified,
then every live key reported is revoked. May import keys, audit and the foundation;
the proxy pipeline serves the endpoint."""
