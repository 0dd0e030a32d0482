"""Scoring a corpus: a folder or glob of CSV/TSV/JSONL/Parquet files into a folder of Parquet (or CSV) shards.

    zh-sentiment predict --input reviews/ --output scored/ [--id-column id] [--processes 2]
    zh-sentiment predict --input 'crawl/*.jsonl' --output scored/ --ray auto      # on a Ray cluster

Every input file is cut into parts of --rows-per-shard rows; each part is scored and written as one output
shard, <input name>.part-NNNNN.parquet, under a temporary name that is renamed into place once it is whole
(outputs.atomic_file). A shard with its final name is a finished one, so the same command run again after a
crash or a kill skips those and scores the rest: every input row is in exactly one output row. _manifest.json
records what shapes the shards (the model's fingerprint, the columns, the rows per shard, the format) and each
input's size and time, so that a re-run with other settings or on changed inputs stops instead of mixing two
runs in one folder. Readers of the folder (pandas, pyarrow, Spark, DuckDB) skip names that start with "." or
"_": the temporary shards and the manifest.

Memory is bounded by one part per process, whatever the corpus's size: files are read a part at a time.

The modules, in the order a run uses them: run (the command: plan, manifest, resuming), inputs (finding the
files, reading them a part at a time), parts (the settings and the parts a run is cut into), then local (this
process or --processes workers) or on_ray (a Ray cluster), each scoring parts with scorer (one part into one
shard).
"""
