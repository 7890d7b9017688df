"""Open every page of the built book in a real headless browser and check what a reader sees.

    python scripts/check_book.py [_build/html] [--toc _toc.yml] [--screenshots DIR] [--student]

The book is served from a local HTTP server on a free port (the way a reader gets it) and each
page listed in the table of contents is loaded in Debian's Chromium, driven by Selenium through
ChromeDriver. For every page:

- it loads: the page was built and the server answers it (HTTP 200);
- formulas are typeset: every math element Sphinx wrote holds MathJax output (`mjx-container`),
  MathJax reported no TeX error and no undefined macro, and no raw TeX (`$$`, `\\(`, `\\frac`...)
  is left in the visible text outside code;
- figures load: every `<img>` has finished loading with naturalWidth > 0, every `<figure>` holds
  an image, and no request of the page got an HTTP error;
- internal links resolve: every `href` into the book names an existing file and, for `#anchor`,
  an existing id on that page;
- diagrams render: every SVG of the page (a Graphviz `<object>`, a Mermaid diagram, an inline SVG
  of a figure) draws something (shapes, a non-empty bounding box);
- citations resolve: no unresolved reference (`.xref` outside a link), and every citation's link
  lands on a bibliography entry;
- numbered references land: every `{numref}` / `{eq}` link goes to an element that carries the
  same number (the figure's caption number, the equation's number);
- no console errors of our own: the browser console's errors that come from the book's pages and
  scripts fail (the browser's own favicon.ico probe is ignored);
- no request leaves the build: every http(s) request made by the page (the browser's network
  log and the page's performance resource entries) must go to the local server. Other hosts
  are not resolved at all (Chromium's --host-resolver-rules), so nothing is ever sent out.

With `--student` (the student edition, `make book EDITION=student`), it also searches every file
of the build (pages, `_sources/`, notebooks, scripts) for the body of any graded function: the
references of scripts/graded_functions.py and the solution cells of solutions/, compared as
normalised lines, so markup around them does not hide them.

It prints one line per page, the failures under it, and a summary; it exits 1 if anything
failed, 2 if the check could not run (no build, no browser). Viewport screenshots of a few
pages, and of every failing page, go to _build/screenshots/ (a build artifact).

Chromium and ChromeDriver come from Debian (`apt-get install chromium chromium-driver`); their
paths can be changed with $CHROMIUM and $CHROMEDRIVER. Selenium is always given the driver's
path, so its driver manager never tries to download one.
"""

from __future__ import annotations

import argparse
import functools
import html.parser
import http.server
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
    # Nothing but the local server resolves: a request to another host fails at once (and is
    # still reported), so a page can never reach the network, however the machine is set up.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)
PAGE_LOAD_TIMEOUT_S = 60
LOAD_ATTEMPTS = 3
MATHJAX_TIMEOUT_S = 60
IMAGE_TIMEOUT_S = 20
MAX_LINES_PER_PAGE = 25
# Files of a build searched for graded bodies (--student): pages, source copies, notebooks, scripts.
LEAK_SUFFIXES = (".html", ".htm", ".txt", ".md", ".ipynb", ".py", ".json", ".js", ".svg")

# Raw TeX that typesetting should have consumed. Searched in the visible text outside code.
RAW_TEX = re.compile(
    r"\$\$"  # display math delimiters
    r"|\\[()\[\]]"  # \( \) \[ \]
    r"|\\[A-Za-z]{2,}"  # a macro: \frac, \sum, \mathbf...
    r"|\$[^$\s][^$\n]{0,200}?[\\^_{][^$\n]{0,200}?\$"  # $x^2$ left as text
)


def find_executable(env_var: str, candidates: tuple[str, ...], name: str) -> str | None:
    """The path in $env_var, else the first existing candidate, else `name` on PATH."""
    if os.environ.get(env_var):
        return os.environ[env_var]
    for candidate in candidates:
        if Path(candidate).is_file():
            return candidate
    return shutil.which(name)


# --------------------------------------------------------------------------- table of contents
def toc_pages(toc_path: Path) -> list[str]:
    """The documents of a Jupyter Book `_toc.yml` (root first, then in reading order), without
    their suffix: e.g. ["book/index", "book/01_neural_networks", ...]."""
    import yaml  # a dependency of Jupyter Book

    toc = yaml.safe_load(toc_path.read_text())
    pages = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk({k: v for k, v in toc.items() if k != "root"})
    return [re.sub(r"\.(md|ipynb|rst)$", "", page) for page in pages]


# --------------------------------------------------------------------------- local server
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the build folder, remembering every request and its status instead of logging."""

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def log_request(self, code="-", size="-"):
        self.server.requests.append((self.path, int(code) if str(code).isdigit() else 0))


class _Server(http.server.ThreadingHTTPServer):
    # A page asks for 20-40 files at once; the default backlog of 5 connections can overflow on
    # a loaded machine, and a refused connection for the page itself shows Chromium's error page.
    request_queue_size = 128


def start_server(build: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(_QuietHandler, directory=str(build))
    server = _Server(("127.0.0.1", 0), handler)
    server.requests = []
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --------------------------------------------------------------------------- anchors of pages
class _IdCollector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and (name == "id" or (name == "name" and tag == "a")):
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def ids_of(path: Path) -> frozenset[str]:
    collector = _IdCollector()
    collector.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(collector.ids)


def local_file(build: Path, url_path: str) -> Path:
    """The file of the build that the server answers for `url_path`."""
    path = build / unquote(url_path).lstrip("/")
    if url_path.endswith("/") or path.is_dir():
        path = path / "index.html"
    return path


# --------------------------------------------------------------------------- in-page scripts
# Waits until MathJax has typeset the page (if the page loads it), then reports math and
# images. Asynchronous: the last argument is Selenium's callback.
PAGE_REPORT_JS = r"""
const done = arguments[arguments.length - 1];
const mathTimeout = arguments[0], imageTimeout = arguments[1];
const t0 = Date.now();
const sleep = ms => new Promise(r => setTimeout(r, ms));
(async () => {
  const report = {mathElements: 0, mjx: 0, untypeset: [], texErrors: [], mathjax: "none",
                  rawTex: [], images: [], badImages: [], emptyFigures: [], resources: []};
  const mathNodes = [...document.querySelectorAll(".math")];
  report.mathElements = mathNodes.length;
  const wantsMathJax = [...document.scripts].some(s => /mathjax/i.test(s.src));
  if (wantsMathJax) {
    report.mathjax = "timeout";
    let loadedAt = null;
    while (Date.now() - t0 < mathTimeout * 1000) {
      if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
        try { await MathJax.startup.promise; report.mathjax = "ok"; }
        catch (e) { report.mathjax = "failed: " + e; }
        break;
      }
      // The script is deferred: once the page has loaded, a MathJax that is still missing
      // two seconds later never came (its file is missing or threw).
      if (document.readyState === "complete") {
        loadedAt = loadedAt || Date.now();
        if (Date.now() - loadedAt > 2000) { report.mathjax = "MathJax never started"; break; }
      }
      await sleep(50);
    }
    if (report.mathjax === "ok" && MathJax.startup.document && MathJax.startup.toMML) {
      for (const item of MathJax.startup.document.math) {
        let mml = "";
        try { mml = MathJax.startup.toMML(item.root); } catch (e) { continue; }
        const tex = String(item.math).trim().slice(0, 80);
        const err = mml.match(/data-mjx-error="([^"]*)"/) || mml.match(/<merror[^>]*>/);
        if (err) report.texErrors.push(`${err[1] || "TeX error"} in: ${tex}`);
        for (const m of mml.matchAll(/<mtext[^>]*mathcolor="red"[^>]*>(\\[^<]*)<\/mtext>/g))
          report.texErrors.push(`undefined macro ${m[1]} in: ${tex}`);
      }
    }
  }
  report.mjx = document.querySelectorAll("mjx-container").length;
  for (const node of mathNodes)
    if (!node.querySelector("mjx-container") && !node.closest("mjx-container"))
      report.untypeset.push(node.textContent.replace(/\s+/g, " ").trim().slice(0, 80));

  // Visible text outside code, math (typeset, or reported above) and scripts.
  const skip = "pre, code, script, style, noscript, textarea, mjx-container, .MathJax, .math, "
             + ".highlight, .linenos, [aria-hidden=true]";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest(skip) || !n.textContent.trim()) continue;
    if (!el.getClientRects().length) continue;  // not rendered
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || style.display === "none") continue;
    const text = n.textContent;
    const hits = [...text.matchAll(RAW_TEX_SOURCE)];
    if (!hits.length) continue;
    const first = hits[0].index, last = hits[hits.length - 1];
    const around = text.slice(Math.max(0, first - 30), last.index + last[0].length + 30)
                       .replace(/\s+/g, " ").trim().slice(0, 160);
    const found = [...new Set(hits.map(m => m[0].slice(0, 40)))].join(" ");
    const line = `${found} in: ${around}`;
    if (!seen.has(line)) { seen.add(line); report.rawTex.push(line); }
  }

  // Images: load even the lazy ones, then wait for all of them.
  const imgs = [...document.images];
  for (const img of imgs) if (img.loading === "lazy") img.loading = "eager";
  const settle = img => img.complete ? Promise.resolve() :
      new Promise(r => { img.addEventListener("load", r); img.addEventListener("error", r); });
  await Promise.race([Promise.all(imgs.map(settle)), sleep(imageTimeout * 1000)]);
  for (const img of imgs) {
    const src = img.getAttribute("src") || "";
    report.images.push(src);
    if (!img.complete || img.naturalWidth === 0)
      report.badImages.push(src || "(no src)");
  }
  for (const fig of document.querySelectorAll("figure, div.figure"))
    if (!fig.querySelector("img, svg, object, video, canvas"))
      report.emptyFigures.push((fig.id || fig.textContent.trim()).slice(0, 80));

  // Diagrams: an SVG in an <object> (Graphviz), inline (Mermaid, figures) must draw something.
  const drawn = svg => {
    if (!svg || svg.nodeName.toLowerCase() !== "svg") return false;
    const shapes = svg.querySelectorAll("path, polygon, polyline, ellipse, circle, rect, line, text, image");
    let box = {width: 0, height: 0};
    try { box = svg.getBBox(); } catch (e) {}
    return shapes.length > 0 && box.width > 0 && box.height > 0;
  };
  const objects = [...document.querySelectorAll("object[data]")];
  const diagramDeadline = Date.now() + imageTimeout * 1000;
  const objectSvg = o => { try { return o.contentDocument && o.contentDocument.documentElement; }
                           catch (e) { return null; } };
  while (Date.now() < diagramDeadline &&
         (objects.some(o => !drawn(objectSvg(o))) ||
          [...document.querySelectorAll(".mermaid")].some(m => !drawn(m.querySelector("svg")))))
    await sleep(100);
  report.diagrams = 0;
  report.badDiagrams = [];
  for (const o of objects) {
    report.diagrams++;
    if (!drawn(objectSvg(o))) report.badDiagrams.push(o.getAttribute("data"));
  }
  for (const m of document.querySelectorAll(".mermaid")) {
    report.diagrams++;
    if (!drawn(m.querySelector("svg"))) report.badDiagrams.push("mermaid: " + m.textContent.trim().slice(0, 60));
  }
  for (const svg of document.querySelectorAll("figure svg, .graphviz svg")) {
    if (svg.closest(".mermaid") || svg.parentElement.closest("svg")) continue;
    report.diagrams++;
    if (!drawn(svg)) report.badDiagrams.push("inline svg in " + (svg.closest("figure, .graphviz").id || "a figure"));
  }
  report.diagrams += [...document.images].filter(i => /\.svg$/i.test(i.getAttribute("src") || "")).length;

  // Citations and cross-references: resolved, and each lands on its target.
  report.unresolved = [...document.querySelectorAll(".xref")].filter(x => !x.closest("a"))
      .map(x => x.textContent.trim().slice(0, 60));
  report.citations = [...document.querySelectorAll(".bibtex-citation, a.citation-reference, .footcite")]
      .map(c => [c.textContent.trim().slice(0, 60),
                 [...c.querySelectorAll("a[href]")].map(a => a.href).concat(
                     c.matches("a[href]") ? [c.href] : [])]);
  report.numbered = [...document.querySelectorAll("a.reference.internal[href]")]
      .filter(a => a.querySelector(".std-numref") || /^#equation-/.test(new URL(a.href).hash)
                   && a.textContent.trim().startsWith("("))
      .map(a => [a.textContent.trim(), a.href]);

  // Links (resolved by the browser) and the page's own record of what it requested.
  report.links = [...document.querySelectorAll("a[href], area[href]")]
      .map(a => [a.getAttribute("href"), a.href]);
  report.ids = [...document.querySelectorAll("[id], a[name]")].map(e => e.id || e.name);
  report.resources = performance.getEntriesByType("resource").map(e => e.name)
      .concat(performance.getEntriesByType("navigation").map(e => e.name));
  report.elapsed = Date.now() - t0;
  done(report);
})().catch(e => done({fatal: String(e && e.stack || e)}));
""".replace("RAW_TEX_SOURCE", "new RegExp(" + json.dumps(RAW_TEX.pattern) + ', "g")')


# --------------------------------------------------------------------------- checking
@dataclass
class PageResult:
    page: str
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0


def make_driver(chromium: str, chromedriver: str, profile: Path):
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium's driver manager: never download
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
    driver.set_script_timeout(MATHJAX_TIMEOUT_S + IMAGE_TIMEOUT_S + 30)
    return driver


def network_events(driver) -> tuple[list[str], dict[str, int], list[tuple[str, str]]]:
    """Requested URLs, HTTP status by URL, and (URL, reason) of failed loads since last call."""
    requests, status, failed, by_id = [], {}, [], {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            by_id[params["requestId"]] = url
            requests.append(url)
        elif method == "Network.responseReceived":
            status[params["response"]["url"]] = params["response"]["status"]
        elif method == "Network.loadingFailed":
            url = by_id.get(params["requestId"], "?")
            failed.append((url, params.get("errorText", "")))
    return requests, status, failed


def check_page(driver, server, build: Path, page: str, base: str) -> PageResult:
    result = PageResult(page)
    html_path = build / f"{page}.html"
    if not html_path.is_file():
        result.failures.append(f"not built: {html_path.relative_to(build)} does not exist")
        return result
    url = f"{base}/{page}.html"
    origin = urlsplit(base).netloc
    start = time.monotonic()
    for attempt in range(LOAD_ATTEMPTS):
        server.requests.clear()
        driver.get_log("browser"), driver.get_log("performance")  # drop what came before
        try:
            driver.get(url)
        except Exception as exc:  # noqa: BLE001 - report any browser failure as the page's
            result.failures.append(f"did not load: {type(exc).__name__}: {exc}".splitlines()[0])
            return result
        # A failed navigation can return normally with Chromium's error page in the tab: check
        # that the tab holds the page asked for, and load it again if not (a loaded machine).
        shown = driver.execute_script(
            "return [location.href, document.readyState, !!document.querySelector('main, article')]")
        if urldefrag(shown[0])[0] == url and shown[1] == "complete" and shown[2]:
            break
    else:
        result.failures.append(f"did not load: the tab shows {shown[0]} ({shown[1]}, "
                               f"main content {'found' if shown[2] else 'missing'}) "
                               f"after {LOAD_ATTEMPTS} attempts")
        return result
    report = driver.execute_async_script(PAGE_REPORT_JS, MATHJAX_TIMEOUT_S, IMAGE_TIMEOUT_S)
    result.seconds = time.monotonic() - start
    if "fatal" in report:
        result.failures.append(f"the page check itself failed: {report['fatal']}")
        return result
    fail = result.failures.append

    # Math.
    if report["mathjax"] not in ("ok", "none"):
        fail(f"MathJax did not typeset the page ({report['mathjax']})")
    if report["mathElements"] and report["mathjax"] == "none":
        fail(f"{report['mathElements']} math elements but the page loads no MathJax")
    for tex in report["untypeset"][:10]:
        fail(f"formula not typeset: {tex}")
    if len(report["untypeset"]) > 10:
        fail(f"... and {len(report['untypeset']) - 10} more formulas not typeset")
    for error in report["texErrors"]:
        fail(f"TeX error: {error}")
    for raw in report["rawTex"]:
        fail(f"raw TeX in the visible text: {raw}")

    # Images and figures.
    for src in report["badImages"]:
        fail(f"image does not load: {src}")
    for figure in report["emptyFigures"]:
        fail(f"figure without an image: {figure}")

    # Diagrams, citations, numbered references.
    for diagram in report["badDiagrams"]:
        fail(f"diagram does not render: {diagram}")
    for text in report["unresolved"]:
        fail(f"unresolved reference: {text}")
    for text, hrefs in report["citations"]:
        problem = citation_problem(build, html_path, text, hrefs, set(report["ids"]))
        if problem:
            fail(problem)
    for text, href in report["numbered"]:
        problem = numbered_problem(build, html_path, text, href, set(report["ids"]))
        if problem:
            fail(problem)

    # Requests: other hosts, HTTP errors on our own files.
    requests, status, failed = network_events(driver)
    outside = []
    for requested in requests + report["resources"]:
        parts = urlsplit(requested)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != origin:
            if requested not in outside:
                outside.append(requested)
    for requested in outside:
        fail(f"request outside the build: {requested}")
    for path, code in server.requests:
        if code >= 400 and not (path == "/favicon.ico" and not _declares_favicon(html_path)):
            fail(f"HTTP {code} for {path}")
    for failed_url, reason in failed:
        parts = urlsplit(failed_url)
        if parts.netloc == origin and parts.path != "/favicon.ico" and "ABORTED" not in reason:
            fail(f"request failed: {failed_url} ({reason})")

    # Links into the book.
    page_ids = set(report["ids"])
    broken = []
    for raw, resolved in report["links"]:
        parts = urlsplit(resolved)
        if parts.scheme not in ("http", "https") or parts.netloc != origin:
            continue  # mailto:, javascript:, and links to other sites (not followed: no network)
        target_url, fragment = urldefrag(resolved)
        fragment = unquote(fragment)
        target = local_file(build, urlsplit(target_url).path)
        if not target.is_file():
            broken.append(f"broken link: {raw} (no file {_rel(target, build)})")
        elif fragment:
            same_page = target.resolve() == html_path.resolve()
            ids = page_ids if same_page else (ids_of(target) if target.suffix == ".html" else None)
            if ids is not None and fragment not in ids:
                broken.append(f"broken anchor: {raw} (no id {fragment!r} in {_rel(target, build)})")
    for message in dict.fromkeys(broken):
        fail(message)

    # Console: errors of our own pages and scripts fail; the others are noted.
    for entry in driver.get_log("browser"):
        if entry["level"] != "SEVERE":
            continue
        message = entry["message"]
        if f"//{origin}/favicon.ico" in message and not _declares_favicon(html_path):
            continue  # the browser's own favicon probe: the book declares none
        if re.match(r"https?://" + re.escape(origin) + r"/", message):
            fail(f"console error: {message.replace(base, '')}")
        elif re.match(r"(https?|wss?)://", message):
            result.notes.append(f"console error from another host: {message}")
        else:
            fail(f"console error: {message}")

    result.counts = {
        "math": report["mjx"],
        "images": len(report["images"]),
        "diagrams": report["diagrams"],
        "citations": len(report["citations"]),
        "links": len(report["links"]),
    }
    return result


def _target(build: Path, html_path: Path, href: str, page_ids: set[str]) -> tuple[Path, str, bool]:
    """(file, fragment, whether that file has an element with that id) of a link of the page."""
    url, fragment = urldefrag(href)
    target = local_file(build, urlsplit(url).path)
    fragment = unquote(fragment)
    if not target.is_file():
        return target, fragment, False
    ids = page_ids if target.resolve() == html_path.resolve() else ids_of(target)
    return target, fragment, bool(fragment) and fragment in ids


def _element_html(path: Path, element_id: str, size: int = 20000) -> str:
    """The HTML that follows the opening tag of the element with that id (a window of it)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    match = re.search(r'<[^>]*\sid="' + re.escape(element_id) + r'"', text)
    return text[match.start():match.start() + size] if match else ""


def citation_problem(build: Path, html_path: Path, text: str, hrefs: list[str], page_ids) -> str:
    """Why a citation does not resolve (None if it lands on a bibliography entry)."""
    if not hrefs or "?" in text:
        return f"unresolved citation: {text}"
    for href in hrefs:
        target, fragment, found = _target(build, html_path, href, page_ids)
        if not found:
            return f"citation {text} links nowhere: {fragment!r} is not in {_rel(target, build)}"
        head = _element_html(target, fragment, 400)
        if not re.match(r'<[^>]*(role="doc-biblioentry"|class="[^"]*citation\b)', head):
            return f"citation {text} does not land on a bibliography entry (#{fragment})"
    return None


def numbered_problem(build: Path, html_path: Path, text: str, href: str, page_ids) -> str:
    """Why a {numref}/{eq} link misses its target (None if the target carries the same number)."""
    target, fragment, found = _target(build, html_path, href, page_ids)
    if not found:
        return f"reference {text!r} links nowhere: no id {fragment!r} in {_rel(target, build)}"
    window = _element_html(target, fragment)
    marker = re.search(r'class="(caption-number|eqno)">([^<]*)<', window)
    number = re.search(r"\d+(\.\d+)*", text)
    # An equation's reference reads "(n)" and lands on its number; a figure's, table's or
    # exercise's reads "Fig. n" and lands on its caption number.
    kind = "eqno" if text.startswith("(") else "caption-number"
    shown = re.search(r"\d+(\.\d+)*", marker.group(2)) if marker else None
    if not (marker and number and shown and marker.group(1) == kind
            and shown.group(0) == number.group(0)):
        found = marker.group(2).strip() if marker else "no number"
        return f"reference {text!r} does not land on its target (#{fragment} shows {found!r})"
    return None


# --------------------------------------------------------------------------- student edition
def leaked_bodies(build: Path) -> list[str]:
    """Graded bodies found anywhere in a build: every page, source copy and notebook, as text."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import graded_functions

    found = []
    for path in sorted(build.rglob("*")):
        if (not path.is_file() or path.suffix not in LEAK_SUFFIXES or path.stat().st_size > 20_000_000
                or {"_static", "mathjax"} & set(path.relative_to(build).parts)):
            continue
        for name in graded_functions.find_leaks(graded_functions.text_of_file(path)):
            found.append(f"{_rel(path, build)}: the body of {name}")
    return found


@functools.lru_cache(maxsize=None)
def _declares_favicon(html_path: Path) -> bool:
    return bool(re.search(r'rel="(shortcut )?icon"', html_path.read_text(errors="replace")))


def _rel(path: Path, build: Path) -> str:
    try:
        return str(path.relative_to(build))
    except ValueError:
        return str(path)


def screenshot(driver, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build", nargs="?", default=str(ROOT / "_build" / "html"),
                        help="the built book (default: _build/html)")
    parser.add_argument("--toc", help="the book's _toc.yml (default: the one two folders "
                        "above the build, else ./_toc.yml)")
    parser.add_argument("--screenshots", help="folder for screenshots (default: "
                        "screenshots/ beside the html folder, i.e. _build/screenshots)")
    parser.add_argument("--screenshot-pages", type=int, default=3,
                        help="how many pages (from the first) to screenshot; failing pages "
                        "are always captured (default: 3)")
    parser.add_argument("--student", action="store_true",
                        help="the student edition: also fail if any file of the build holds the "
                        "body of a graded function (scripts/graded_functions.py)")
    args = parser.parse_args(argv)

    build = Path(args.build).resolve()
    toc = Path(args.toc) if args.toc else build.parent.parent / "_toc.yml"
    if not args.toc and not toc.is_file():
        toc = Path("_toc.yml")
    shots = Path(args.screenshots) if args.screenshots else build.parent / "screenshots"
    chromium = find_executable("CHROMIUM", CHROMIUM_CANDIDATES, "chromium")
    chromedriver = find_executable("CHROMEDRIVER", CHROMEDRIVER_CANDIDATES, "chromedriver")
    problems = []
    if not build.is_dir():
        problems.append(f"no built book at {build} (run `make book`)")
    if not toc.is_file():
        problems.append(f"no table of contents at {toc} (give --toc)")
    if not chromium:
        problems.append("no Chromium (apt-get install chromium, or set $CHROMIUM)")
    if not chromedriver:
        problems.append("no ChromeDriver (apt-get install chromium-driver, or set $CHROMEDRIVER)")
    if problems:
        for problem in problems:
            print(f"check_book: {problem}", file=sys.stderr)
        return 2

    pages = toc_pages(toc)
    started = time.monotonic()
    server = start_server(build)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    results: list[PageResult] = []
    with tempfile.TemporaryDirectory(prefix="check_book_") as profile:
        driver = make_driver(chromium, chromedriver, Path(profile))
        try:
            print(f"checking {len(pages)} pages of {build} with {chromium} "
                  f"({driver.capabilities.get('browserVersion', '?')})", flush=True)
            for index, page in enumerate(pages):
                result = check_page(driver, server, build, page, base)
                results.append(result)
                counts = ", ".join(f"{v} {k}" for k, v in result.counts.items())
                status = "FAIL" if result.failures else "ok  "
                print(f"{status} {page:40s} {counts:40s} {result.seconds:5.1f} s", flush=True)
                for line in result.failures[:MAX_LINES_PER_PAGE]:
                    print(f"       {line}")
                if len(result.failures) > MAX_LINES_PER_PAGE:
                    print(f"       ... and {len(result.failures) - MAX_LINES_PER_PAGE} more")
                for line in result.notes:
                    print(f"       note: {line}")
                if (index < args.screenshot_pages or result.failures) and result.counts:
                    screenshot(driver, shots / (page.replace("/", "__") + ".png"))
        finally:
            driver.quit()
            server.shutdown()
            server.server_close()

    if args.student:
        leaks = PageResult("student edition: no graded body")
        leaks.failures = leaked_bodies(build)
        results.append(leaks)
        status = "FAIL" if leaks.failures else "ok  "
        print(f"{status} {leaks.page}", flush=True)
        for line in leaks.failures[:MAX_LINES_PER_PAGE]:
            print(f"       leak: {line}")
    failed = [r for r in results if r.failures]
    total = sum(len(r.failures) for r in results)
    print(f"{len(results)} pages checked in {time.monotonic() - started:.1f} s: "
          f"{len(results) - len(failed)} ok, {len(failed)} failed ({total} problems); "
          f"screenshots in {shots}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
