"""Feedback HTML that renders math without network.

nbgrader's feedback template loads MathJax 2 from a CDN. Feedback files travel
to students one by one (``nbgrader release_feedback`` copies the HTML files
only), so a MathJax folder next to them would not arrive: instead the CDN script
is replaced by the local MathJax 3 build ``tex-svg.js`` *inlined* in the page
(about 2 MB; SVG output needs no font files) -- only in pages that contain math.
A page without math gets no MathJax at all. The local copy is the one the book
uses: ``make`` installs ``mathjax@3.2.2`` from npm into ``_build/npm`` and copies
it to ``_build/static/mathjax``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Any script from the network (the feedback template's only one is MathJax 2 from a CDN).
CDN_SCRIPT = re.compile(r'<script[^>]*src="(https?:)?//[^"]*"[^>]*>\s*</script>', re.IGNORECASE)
OLD_CONFIG = re.compile(r'<script type="text/x-mathjax-config">.*?</script>', re.DOTALL)
MATH = re.compile(r"\$[^$\n]+\$|\\\(|\\\[|\\begin\{")
CONFIG = """<script>
window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], processEscapes: true},
                  svg: {fontCache: 'global'}};
</script>"""


def mathjax_file() -> Path:
    """The local MathJax 3 component: $LLM_COURSE_MATHJAX, else the book build's copy."""
    candidates = [os.environ.get("LLM_COURSE_MATHJAX"), ROOT / "_build/static/mathjax/tex-svg.js",
                  ROOT / "_build/npm/node_modules/mathjax/es5/tex-svg.js"]
    for path in candidates:
        if path and Path(path).is_file():
            return Path(path)
    raise FileNotFoundError("no local MathJax: run `make _build/static/mathjax/tex-chtml.js` (npm mathjax@3.2.2)")


def offline_mathjax(page: Path) -> bool:
    """Rewrite one feedback page to load no remote script; return whether MathJax was inlined."""
    page = Path(page)
    html = page.read_text(encoding="utf-8")
    html = OLD_CONFIG.sub("", CDN_SCRIPT.sub("", html))
    body = html.split("<body", 1)[-1]
    inline = bool(MATH.search(body))
    if inline and "window.MathJax" not in html:
        script = mathjax_file().read_text(encoding="utf-8").replace("</script", "<\\/script")
        html = html.replace("</head>", f"{CONFIG}\n<script>{script}</script>\n</head>", 1)
    os.chmod(page, 0o644)  # nbgrader writes feedback read-only
    page.write_text(html, encoding="utf-8")
    return inline
