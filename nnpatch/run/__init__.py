"""A run, from recipe to folder: the prepare stage (`prepare`), the stages that follow
(`execute`), the run folder and its manifest (`folder`, `manifest`), row shards (`shards`),
`--resume` (`resume`, `fingerprint`), NDIF's preconditions (`remote`) and the tables
(`tables`)."""
