"""Rebuilds data/corpus/corpus.jsonl.zst from three Debian `main` packages (BUILD time only).

The committed corpus is the output of this script; nothing at run time needs it, Debian or
`rdata`. To rebuild (as root, network to the Debian mirror only):

  apt-get update && mkdir -p /tmp/cb && cd /tmp/cb
  apt-get download r-cran-janeaustenr python3.11-doc jargon-text
  for d in *.deb; do dpkg -x $d x; done
  pip install --target /tmp/rdata_pkgs rdata      # reads R's lazy-load data files
  cd /work/main && PYTHONPATH=/tmp/rdata_pkgs .venv/bin/python data/corpus/build_corpus.py /tmp/cb/x

One JSON object per line: {"text", "label", "source"}; labels:
  fiction    Jane Austen's six novels (janeaustenr 1.0.0), one document per chapter
  technical  Python 3.11 documentation reST (python3.11-doc 3.11.2), one document per
             section (text between two top-level headings)
  glossary   The Jargon File 4.4.7 (jargon-text), one document per lexicon entry
Documents appear in a fixed order (package, then file name, then position).
"""
import glob
import gzip
import json
import os
import re
import sys
import zlib

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.jsonl.zst")
PY_DOC_DIRS = ("tutorial", "reference", "howto", "faq", "library")


def austen(root):
  import rdata
  d = os.path.join(root, "usr/lib/R/site-library/janeaustenr/data/")
  index = rdata.conversion.convert(rdata.parser.parse_data(
      gzip.decompress(open(d + "Rdata.rdx", "rb").read())))
  rdb = open(d + "Rdata.rdb", "rb").read()
  for name, (off, n) in sorted(index["variables"].items()):
    lines = rdata.conversion.convert(rdata.parser.parse_data(
        zlib.decompress(rdb[off + 4:off + n])))
    chapter, number = [], 0
    for line in list(lines) + ["CHAPTER END"]:
      line = str(line)
      if re.match(r"^\s*(CHAPTER|Chapter)\s+[0-9IVXLC]+\.?\s*$", line) or line == "CHAPTER END":
        text = _paragraphs(chapter)
        if text:
          yield {"text": text, "label": "fiction", "source": f"janeaustenr/{name}#{number}"}
        chapter, number = [line], number + 1
      else:
        chapter.append(line)


def _paragraphs(lines):
  """R stores one printed line per element; rejoin hard-wrapped lines into paragraphs."""
  paras, cur = [], []
  for line in lines:
    if line.strip():
      cur.append(line.strip())
    elif cur:
      paras.append(" ".join(cur))
      cur = []
  if cur:
    paras.append(" ".join(cur))
  return "\n\n".join(paras).strip()


def python_docs(root):
  base = os.path.join(root, "usr/share/doc/python3.11/html/_sources")
  for sub in PY_DOC_DIRS:
    for path in sorted(glob.glob(os.path.join(base, sub, "*.rst.txt"))):
      rel = os.path.relpath(path, base)
      text = open(path, encoding="utf-8").read()
      lines = text.split("\n")
      # split before a heading: a text line followed by an underline of = or - of >= its length
      starts = [0] + [i for i in range(1, len(lines) - 1)
                      if lines[i].strip() and re.fullmatch(r"(=+|-+)", lines[i + 1].strip() or "x")
                      and len(lines[i + 1].strip()) >= len(lines[i].strip())
                      and not lines[i - 1].strip()]
      starts = sorted(set(starts)) + [len(lines)]
      for k in range(len(starts) - 1):
        section = "\n".join(lines[starts[k]:starts[k + 1]]).strip()
        if section:
          yield {"text": section, "label": "technical", "source": f"python3.11-doc/{rel}#{k}"}


def jargon(root):
  raw = gzip.decompress(open(os.path.join(
      root, "usr/share/doc/jargon-text/jargon.txt.gz"), "rb").read()).decode("utf-8")
  # the lexicon proper: entries start with an indented ":headword:" line
  body = raw.split("\nGlossary\n", 1)[-1].split("\nAppendix A.", 1)[0]
  entries, cur = [], None
  for line in body.split("\n"):
    if re.match(r"^   :[^ ].*:", line):
      if cur:
        entries.append(cur)
      cur = [line]
    elif cur is not None:
      cur.append(line)
  if cur:
    entries.append(cur)
  for i, lines in enumerate(entries):
    head = lines[0].strip()
    text = (head + "\n\n" + _paragraphs(lines[1:])).strip()
    yield {"text": text, "label": "glossary", "source": f"jargon-text/{i}"}


def main(root):
  import zstandard
  docs = list(austen(root)) + list(python_docs(root)) + list(jargon(root))
  data = "".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs)
  blob = zstandard.ZstdCompressor(level=19).compress(data.encode("utf-8"))
  with open(OUT, "wb") as f:
    f.write(blob)
  counts = {}
  for d in docs:
    c = counts.setdefault(d["label"], [0, 0])
    c[0] += 1
    c[1] += len(d["text"])
  print(f"{OUT}: {len(blob)} bytes compressed, {len(data)} uncompressed; "
        f"(documents, characters) per label: {counts}")


if __name__ == "__main__":
  main(sys.argv[1])
