#!/usr/bin/env python3
"""Fails when a rendered rustdoc page shows an intra-doc link as literal text.

Usage: doc_links_rendered.py target/doc/lazarus

rustdoc's broken-link lint checks each crate where its docs are written; an item the
facade re-exports with #[doc(inline)] is rendered again in the facade, and a link that
cannot be placed there (e.g. into a crate whose docs were not generated) silently becomes
text such as `[store::Repository]`. This looks at what the reader sees. Blanket
implementations of foreign traits (tracing's `Instrument`) are cut off: their docs are
that crate's, rendered without its own pages under --no-deps.
"""
import glob
import re
import sys

LITERAL = re.compile(
    r"\[<code>[^<\]]{1,100}</code>\]"  # [`Name`] left as text
    r"|\[(?:crate|self|super|[a-z_]+)::[A-Za-z_:]+\]"  # [path::Name] left as text
)


def main(root):
    pages = glob.glob(root + "/**/*.html", recursive=True)
    if not pages:
        print(f"doc_links_rendered: no pages under {root}", file=sys.stderr)
        return 2
    bad = 0
    for page in sorted(pages):
        with open(page, encoding="utf-8", errors="replace") as f:
            html = f.read()
        if 'http-equiv="refresh"' in html[:1000]:
            continue  # a redirect page
        cut = html.find('id="blanket-implementations"')
        if cut >= 0:
            html = html[:cut]
        for m in LITERAL.finditer(html):
            print(f"{page}: intra-doc link rendered as text: {m.group(0)}")
            bad += 1
    if bad:
        print(f"doc_links_rendered: {bad} link(s) rendered as text", file=sys.stderr)
        return 1
    print(f"doc_links_rendered: {len(pages)} pages, no link rendered as text")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "target/doc/lazarus"))
