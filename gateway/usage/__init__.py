"""Usage per key and UTC hour (§17): counted in process, written in batches, read as
buckets. May import the foundation; edge, admin, selfservice and the CLI use it."""
