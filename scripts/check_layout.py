#!/usr/bin/env python3
"""The include rules of docs/ARCHITECTURE.md, checked on the source tree.

    check_layout.py [SOURCE_ROOT]      (the meson test "layout")

- tools/ and server/ include the public headers (include/) and their own
  folder's headers only, and their meson.build files do not ask for the
  internal ones (nesf_internal_dep);
- include/ headers include public headers only;
- core/ holds only its concern folders, and a concern includes its own
  headers and those of the concerns below it (ALLOWED);
- backends/ include error.h, backend.h and their own headers only;
- no function body in core/, backends/, tools/ or server/ is over MAX_FUNCTION
  lines (a body runs from a "{" in column 0 that follows a signature line to
  the next "}" in column 0, which is how every function here is written).
Every quoted #include is resolved the way the compiler does (the including
file's folder, then include/, then for core/ the internal headers of core's
folders).  Prints one line per violation and exits 1 if there is any.
"""
import os
import re
import sys

# what each concern may include besides itself (docs/ARCHITECTURE.md)
ALLOWED = {
    'base': set(),
    'backends': {'base'},
    'crystal': {'base'},
    'io': {'base', 'crystal'},
    'eval': {'base', 'crystal'},
    'nn': {'base', 'crystal', 'io', 'backends'},
    'train': {'base', 'crystal', 'io', 'backends', 'nn'},
    'decode': {'base', 'crystal', 'io', 'backends', 'nn', 'train'},
    'viz': {'base', 'crystal', 'backends'},
}
# public headers whose concern is not that of a same-named source file
HOME = {'backend.h': 'backends'}
SOURCE_EXT = ('.c', '.h', '.cu', '.cuh', '.cpp')
MAX_FUNCTION = 100
INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def sources(root, top):
    for d, _, files in os.walk(os.path.join(root, top)):
        for f in sorted(files):
            if f.endswith(SOURCE_EXT):
                yield os.path.relpath(os.path.join(d, f), root)


def concern_of(root, rel, homes):
    """The concern a file belongs to: its core/ folder, backends, or for a
    public header the folder of its source (homes); None when unknown."""
    parts = rel.split(os.sep)
    if parts[0] == 'core' and len(parts) > 2:
        return parts[1]
    if parts[0] == 'backends':
        return 'backends'
    if parts[0] == 'include':
        return homes.get(parts[1])
    return None


def public_homes(root, problems):
    homes = dict(HOME)
    by_name = {}
    for top in ('core', 'backends'):
        for rel in sources(root, top):
            c = concern_of(root, rel, {})
            if c and rel.endswith(('.c', '.cu')):
                by_name.setdefault(os.path.basename(rel)[:-2 if rel.endswith('.c') else -3], c)
    for h in sorted(os.listdir(os.path.join(root, 'include'))):
        if h in homes or not h.endswith('.h'):
            continue
        if h[:-2] in by_name:
            homes[h] = by_name[h[:-2]]
        else:
            problems.append(f'include/{h}: no source of that name under core/ or backends/; '
                            'name its concern in HOME (scripts/check_layout.py)')
    return homes


def resolve(root, rel, name, internal_dirs):
    here = os.path.dirname(rel)
    cands = [os.path.normpath(os.path.join(here, name)), os.path.join('include', name)]
    cands += [os.path.join(d, name) for d in internal_dirs]
    for c in cands:
        if os.path.isfile(os.path.join(root, c)):
            return c
    return None


def check_file(root, rel, homes, internal_dirs, problems):
    top = rel.split(os.sep)[0]
    here = os.path.dirname(rel)
    mine = concern_of(root, rel, homes)
    with open(os.path.join(root, rel), encoding='utf-8', errors='replace') as fh:
        text = fh.read()
    for name in INCLUDE_RE.findall(text):
        target = resolve(root, rel, name, internal_dirs if top == 'core' else [])
        if target is None:
            problems.append(f'{rel}: "{name}" is not found (own folder, include/)')
            continue
        if top in ('tools', 'server'):
            if not (target.startswith('include' + os.sep) or os.path.dirname(target) == here):
                problems.append(f'{rel}: "{name}" resolves to {target}: tools/ and server/ '
                                'include only include/ and their own folder')
            continue
        if top == 'include' and not target.startswith('include' + os.sep):
            problems.append(f'{rel}: public header includes {target} (not public)')
            continue
        theirs = concern_of(root, target, homes)
        if mine is None or theirs is None or theirs == mine:
            continue
        if theirs not in ALLOWED.get(mine, set()):
            problems.append(f'{rel} ({mine}) includes {target} ({theirs}): {mine} may include '
                            f'{", ".join(sorted(ALLOWED.get(mine, ()))) or "nothing else"}')


def long_functions(root, rel, problems):
    """Function bodies over MAX_FUNCTION lines in one source file."""
    with open(os.path.join(root, rel), encoding='utf-8', errors='replace') as fh:
        lines = fh.read().split('\n')
    i = 1
    while i < len(lines):
        prev = lines[i - 1].strip()
        if lines[i] == '{' and prev[:1] not in ('', '#', '/', '*', '}') and not prev.endswith(('=', ';')):
            j = i + 1
            while j < len(lines) and lines[j] != '}':
                j += 1
            if j - i + 1 > MAX_FUNCTION:
                problems.append(f'{rel}:{i}: {prev[:60]}... is {j - i + 1} lines (at most {MAX_FUNCTION})')
            i = j
        i += 1


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                           os.path.join(os.path.dirname(__file__), '..'))
    problems = []
    core = os.path.join(root, 'core')
    internal_dirs = []
    for e in sorted(os.listdir(core)):
        p = os.path.join(core, e)
        if os.path.isdir(p) and e in ALLOWED:
            internal_dirs.append(os.path.join('core', e))
        elif e != 'meson.build':
            problems.append(f'core/{e}: core/ holds only its concern folders '
                            f'({", ".join(sorted(set(ALLOWED) - {"backends"}))})')
    homes = public_homes(root, problems)
    for top in ('include', 'core', 'backends', 'tools', 'server'):
        for rel in sources(root, top):
            check_file(root, rel, homes, internal_dirs, problems)
            if rel.endswith(('.c', '.cu', '.cpp')):
                long_functions(root, rel, problems)
    for top in ('tools', 'server'):
        for d, _, files in os.walk(os.path.join(root, top)):
            if 'meson.build' in files:
                rel = os.path.relpath(os.path.join(d, 'meson.build'), root)
                with open(os.path.join(root, rel), encoding='utf-8') as fh:
                    if re.search(r'nesf_internal_(dep|inc)', fh.read()):
                        problems.append(f'{rel}: tools/ and server/ do not get the internal '
                                        'headers (nesf_internal_dep)')
    for p in problems:
        print('layout:', p)
    print(f'layout: {len(problems)} problem(s)')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
