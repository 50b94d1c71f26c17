#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""docs/dbus-api.md cannot drift: it, daemon/common/bus-api.h and the running
daemon's introspection must list the same methods (with their arguments'
names, types and directions), properties (type, const or not) and errors,
and docs/org.vhostmig1.5 must be what docs/dbus-api.md generates.

  api-doc-check.py VHOSTMIGD API_OBJECTS SOURCE_ROOT
        check (needs root: it starts a private bus and the daemon, stopped by
        pid at the end; API_OBJECTS is tests/dbus/api-objects, built)
  api-doc-check.py --write-man SOURCE_ROOT      regenerate docs/org.vhostmig1.5
"""
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

INTERFACES = ["org.vhostmig1.Manager", "org.vhostmig1.Vm", "org.vhostmig1.Device"]
ARG = re.compile(r"`([^`]+)` (\w+)")
METHOD = re.compile(r"^\*\*(\w+)\*\*\((.*?)\)(?: → \(?(.*?)\)?)?$")


# ---- the document ------------------------------------------------------------------------

def parse_doc(text):
    """{interface: {"methods": {name: [(dir, type, arg)]}, "properties": {name: (type, const)}}}, errors, prose"""
    api, errors = {}, []
    iface = section = None
    for line in text.splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
            iface = name if name in INTERFACES else None
            section = "errors" if name == "Errors" else None
            if iface:
                api[iface] = {"methods": {}, "properties": {}}
            continue
        if line.startswith("### "):
            section = line[4:].strip().lower()
            continue
        m = METHOD.match(line)
        if iface and section == "methods" and m:
            args = [("in", t, n) for t, n in ARG.findall(m.group(2))]
            args += [("out", t, n) for t, n in ARG.findall(m.group(3) or "")]
            api[iface]["methods"][m.group(1)] = args
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if iface and section == "properties" and len(cells) == 4 and cells[1] not in ("Type", "---"):
            api[iface]["properties"][cells[0]] = (cells[1], cells[2] == "const")
        elif section == "errors" and len(cells) == 2 and "." in cells[0]:
            errors.append(cells[0])
    return api, errors


# ---- daemon/common/bus-api.h --------------------------------------------------------------

def parse_header(text):
    macros = dict(re.findall(r'#define (VHOSTMIG_ERROR_\w+)\s+VHOSTMIG_ERROR\("(\w+)"\)', text))
    def block(name):
        m = re.search(r"#define %s\(X\)(.*?)\n\n" % name, text, re.S)
        return m.group(1) if m else ""
    errors = []
    for e in re.findall(r"X\(([^)]*)\)", block("VHOSTMIG_ERRORS")):
        e = e.strip()
        errors.append(e.strip('"') if e.startswith('"') else "org.vhostmig1.Error." + macros[e])
    props = {}
    for iface, macro in (("org.vhostmig1.Manager", "VHOSTMIG_MANAGER_PROPERTIES"),
                         ("org.vhostmig1.Vm", "VHOSTMIG_VM_PROPERTIES"),
                         ("org.vhostmig1.Device", "VHOSTMIG_DEVICE_PROPERTIES")):
        props[iface] = dict(re.findall(r'X\((\w+), "([^"]+)"\)', block(macro)))
    return props, errors


# ---- the running daemon --------------------------------------------------------------------

def busctl(address, *args, **kw):
    r = subprocess.run(["busctl", "--address=" + address] + list(args), capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError("busctl %s: %s" % (" ".join(args), r.stderr.strip()))
    return r.stdout


def introspect(address, path, iface):
    xml = busctl(address, "introspect", "--xml-interface", "org.vhostmig1", path)
    node = ET.fromstring(xml)
    for i in node.findall("interface"):
        if i.get("name") != iface:
            continue
        methods = {m.get("name"): [(a.get("direction", "in"), a.get("type"), a.get("name"))
                                   for a in m.findall("arg")] for m in i.findall("method")}
        props = {}
        for p in i.findall("property"):
            const = any(a.get("name") == "org.freedesktop.DBus.Property.EmitsChangedSignal" and a.get("value") == "const"
                        for a in p.findall("annotation"))
            props[p.get("name")] = (p.get("type"), const)
        return {"methods": methods, "properties": props}
    raise RuntimeError("%s has no interface %s" % (path, iface))


def running_api(daemon, objects, root, tmp):
    out = subprocess.run([os.path.join(root, "tests/dbus/start-bus.sh")], check=True, capture_output=True,
                         text=True).stdout
    bus = dict(word.split("=", 1) for word in shlex.split(out))   # shell assignments, quoted for eval
    proc = None
    try:
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus["BUS_ADDRESS"])
        env.pop("NOTIFY_SOCKET", None)
        log = open(os.path.join(tmp, "vhostmigd.log"), "w")
        proc = subprocess.Popen([daemon], env=env, stdout=log, stderr=log)
        addr = bus["BUS_ADDRESS"]
        for _ in range(100):
            names = busctl(addr, "list", "--no-legend")
            if "org.vhostmig1 " in names:
                break
            time.sleep(0.1)
        # A VM and a device that stays configuring: api-objects passes the memory's fd, busctl cannot.
        r = subprocess.run([objects], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip())
        dev = r.stdout.strip()
        vm = dev[:dev.index("/dev/")]
        return {"org.vhostmig1.Manager": introspect(addr, "/org/vhostmig1", "org.vhostmig1.Manager"),
                "org.vhostmig1.Vm": introspect(addr, vm, "org.vhostmig1.Vm"),
                "org.vhostmig1.Device": introspect(addr, dev, "org.vhostmig1.Device")}
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run([os.path.join(root, "tests/dbus/start-bus.sh"), "--stop", bus["BUS_PID"], bus["BUS_DIR"]])


# ---- the man page ----------------------------------------------------------------------------

def roff(s):
    s = s.replace("\\", "\\e").replace("`", "")
    s = re.sub(r"\*\*(.*?)\*\*", r"\\fB\1\\fR", s)
    return "\n".join(("\\&" + l if l.startswith((".", "'")) else l) for l in s.split("\n"))


def man_page(text, api):
    """org.vhostmig1(5): the interfaces in systemd's style, then the document's prose."""
    out = ['.\\" SPDX-License-Identifier: LGPL-2.1-or-later',
           '.\\" Generated from docs/dbus-api.md by tests/dbus/api-doc-check.py --write-man: do not edit.',
           '.TH ORG.VHOSTMIG1 5 "" "vhostmig" "vhostmig"',
           ".SH NAME", "org.vhostmig1 \\- the D\\-Bus interface of vhostmigd",
           ".SH INTERFACES", ".nf"]
    for iface in INTERFACES:
        out.append("interface %s {" % iface)
        out.append("  methods:")
        for name, args in api[iface]["methods"].items():
            out.append("    %s(%s);" % (name, ", ".join("%s %s %s" % a for a in args)))
        out.append("  properties:")
        for name, (t, const) in api[iface]["properties"].items():
            out.append("    readonly %s %s;%s" % (t, name, "  /* const */" if const else ""))
        out.append("};")
    out.append(".fi")
    # The prose: headings become sections, tables and paragraphs stay text.
    for block in re.split(r"\n\s*\n", text.split("\n", 1)[1]):
        block = block.strip()
        if not block:
            continue
        if block.startswith("## "):
            out.append(".SH " + roff(block[3:].upper()))
        elif block.startswith("### "):
            out.append(".SS " + roff(block[4:]))
        elif block.startswith("|"):
            out.append(".nf")
            out += [roff(" ".join(c.strip() for c in l.strip().strip("|").split("|")))
                    for l in block.splitlines() if not l.startswith("|---")]
            out.append(".fi")
        else:
            out += [".PP", roff(block)]
    out += [".SH SEE ALSO", "vhostmigd(8), vhostmigctl(1), busctl(1)"]
    return "\n".join(out) + "\n"


# ---- checks ---------------------------------------------------------------------------------------

def compare(what, a_name, a, b_name, b, problems):
    for k in sorted(set(a) | set(b)):
        if k not in b:
            problems.append("%s %s: in %s, not in %s" % (what, k, a_name, b_name))
        elif k not in a:
            problems.append("%s %s: in %s, not in %s" % (what, k, b_name, a_name))
        elif a[k] != b[k]:
            problems.append("%s %s: %s says %s, %s says %s" % (what, k, a_name, a[k], b_name, b[k]))


def main(argv):
    if len(argv) == 3 and argv[1] == "--write-man":
        text = open(os.path.join(argv[2], "docs/dbus-api.md")).read()
        open(os.path.join(argv[2], "docs/org.vhostmig1.5"), "w").write(man_page(text, parse_doc(text)[0]))
        return 0
    daemon, objects, root = argv[1], argv[2], argv[3]
    text = open(os.path.join(root, "docs/dbus-api.md")).read()
    doc, doc_errors = parse_doc(text)
    header_props, header_errors = parse_header(open(os.path.join(root, "daemon/common/bus-api.h")).read())
    problems = []
    with tempfile.TemporaryDirectory(prefix="vhostmig-apidoc-") as tmp:
        live = running_api(daemon, objects, root, tmp)
    for iface in INTERFACES:
        compare(iface + " method", "the daemon", live[iface]["methods"], "docs/dbus-api.md",
                doc.get(iface, {}).get("methods", {}), problems)
        compare(iface + " property", "the daemon", live[iface]["properties"], "docs/dbus-api.md",
                doc.get(iface, {}).get("properties", {}), problems)
        compare(iface + " property", "the daemon", {k: v[0] for k, v in live[iface]["properties"].items()},
                "bus-api.h", header_props[iface], problems)
        if list(live[iface]["properties"]) != list(header_props[iface]):
            problems.append("%s: the properties are in another order in bus-api.h" % iface)
    compare("error", "bus-api.h", {e: 1 for e in header_errors}, "docs/dbus-api.md", {e: 1 for e in doc_errors},
            problems)
    man = open(os.path.join(root, "docs/org.vhostmig1.5")).read()
    if man != man_page(text, doc):
        problems.append("docs/org.vhostmig1.5 is not what docs/dbus-api.md generates: run "
                        "tests/dbus/api-doc-check.py --write-man .")
    for p in problems:
        print("api-doc: " + p)
    print("api-doc: %s (%d interfaces, %d errors)" % ("FAIL" if problems else "OK", len(INTERFACES),
                                                      len(header_errors)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
