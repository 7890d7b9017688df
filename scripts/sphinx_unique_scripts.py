"""A Sphinx extension that writes each of a page's scripts once.

With Sphinx 7.4, an inline script that an extension adds after the HTML builder started
(sphinx-thebe's `const THEBE_JS_URL = ...`, sphinx-togglebutton's selector) is kept twice:
once as `_JavaScript(None, body=...)` and once, re-read from the registry, as
`_JavaScript('', body=...)`, which do not compare equal. Every page then declared
`THEBE_JS_URL` twice and the browser logged "Uncaught SyntaxError: Identifier 'THEBE_JS_URL'
has already been declared" (scripts/check_book.py reports it). This drops the second copy.
Loaded by `sphinx: local_extensions` in _config.yml.
"""


def _key(script):
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {})
    return str(filename), getattr(script, "priority", 0), tuple(sorted(attributes.items()))


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # the builder's own list: it restores it after each page


def setup(app):
    # Late, after the themes and extensions have added their per-page scripts.
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
