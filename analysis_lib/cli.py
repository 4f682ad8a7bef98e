"""The ``beamside`` command: demo data, a look inside files, reductions from a shell.

    beamside demo-data DIR [--size 10GB]
    beamside info bt-1001/raw/scan_0001.nxs
    beamside reduce mean-frame bt-1001/raw/scan_0001.nxs -o ~/mean.nxs
    beamside reduce radial-profile REF --poni bt-1001/calib/detector.poni -o ~/rings.nxs

Errors a user can act on (no access, a bad file, a bad parameter) print one
clear line and exit with status 2; anything else is a bug and shows its
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from ._reductions import COMMAND_LINE, command_name, function_name

OPS = tuple(command_name(op) for op in COMMAND_LINE)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from ._errors import BeamsideError

    try:
        return args.run(args) or 0
    except (BeamsideError, FileNotFoundError, ValueError) as exc:
        print(f"beamside: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="beamside", description="Analyse beamtime data where it lives.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo-data", help="write a demo catalog and beamtimes (Eiger-like NeXus scans)")
    demo.add_argument("directory")
    demo.add_argument("--size", default="2GB", help="uncompressed frame bytes to write (default 2GB)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    info = sub.add_parser("info", help="show a file's tree, shapes, chunking, filters and NeXus default")
    info.add_argument("ref", help="beamtime reference (bt-1001/raw/scan.nxs) or path")
    info.add_argument("--user")
    info.set_defaults(run=_info)

    red = sub.add_parser("reduce", help="reduce a frame stack on-site and save the result as NeXus")
    red.add_argument("op", choices=OPS)
    red.add_argument("ref", help="beamtime reference (bt-1001/raw/scan.nxs) or path")
    red.add_argument("-o", "--output", required=True, help="result file (.nxs), outside the beamtime data")
    red.add_argument("--signal", help="NXdata signal to use instead of the @signal default")
    red.add_argument("--dataset", help="plain HDF5 dataset path instead of the NeXus default")
    red.add_argument("--workers", type=int, help="run on a local cluster of this many worker processes")
    _op_arguments(red)
    red.add_argument("--user")
    red.add_argument("--quiet", action="store_true", help="no progress bar")
    red.set_defaults(run=_reduce)

    rem = sub.add_parser("remote", help="run a reduction on your on-site cluster from outside; only the result travels")
    rem_sub = rem.add_subparsers(dest="remote_command", metavar="ACTION", required=True)
    rred = rem_sub.add_parser("reduce", help="reduce a beamtime file on-site and save the result here")
    rred.add_argument("op", choices=OPS)
    rred.add_argument("ref", help="beamtime reference (bt-1001/raw/scan.nxs)")
    rred.add_argument("-o", "--output", required=True, help="result file (.nxs) on this machine")
    rred.add_argument("--hub", required=True, help="the hub's URL, e.g. https://hub.facility.eu")
    rred.add_argument("--proxy-address", help="the gateway's scheduler address (default gateway://HUBHOST:8786)")
    rred.add_argument("--workers", type=int, default=2)
    rred.add_argument("--signal")
    _op_arguments(rred)
    rred.set_defaults(run=_remote_reduce)

    _add_plugin_commands(sub)
    return p


def _add_plugin_commands(sub) -> None:
    """Subcommands other packages add (``beamside up``, ``beamside passwd`` from the hub), by entry point.

    Each entry point in the ``beamside.commands`` group names a function that
    takes these subparsers and adds its subcommands; the library never imports
    the hub itself.
    """
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="beamside.commands"), key=lambda ep: ep.name):
        ep.load()(sub)


def _op_arguments(p) -> None:
    p.add_argument("--roi", action="append", default=[], metavar="NAME=R0:R1,C0:C1", help="rectangle for roi-sums (repeatable)")
    p.add_argument("--poni", help="PONI geometry file for radial-profile (beamtime reference or path)")
    p.add_argument("--npt", type=int, default=1000, help="radial bins (radial-profile)")
    p.add_argument("--unit", default="q_nm^-1", help="radial unit (radial-profile), e.g. q_nm^-1, 2th_deg")
    p.add_argument("--factor", type=int, default=2, help="pixel binning factor (bin)")


def _op_and_params(args) -> tuple[str, dict]:
    """The al.ops function name and its keyword arguments from the command line."""
    if args.op == "roi-sums":
        if not args.roi:
            raise ValueError("roi-sums needs at least one --roi NAME=R0:R1,C0:C1")
        return "roi_sums", {"rois": dict(_parse_roi(r, i) for i, r in enumerate(args.roi))}
    if args.op == "radial-profile":
        if not args.poni:
            raise ValueError("radial-profile needs --poni (a PONI geometry file)")
        return "radial_profile", {"poni": args.poni, "npt": args.npt, "unit": args.unit}
    if args.op == "bin":
        return "bin", {"factor": args.factor}
    return function_name(args.op), {}


def _demo(args) -> int:
    from tqdm.auto import tqdm

    from .demo import parse_size, write_demo_data
    from .contract import CATALOG_ENV, USER_ENV

    total = parse_size(args.size)
    with tqdm(total=total, unit="B", unit_scale=True, desc="demo data") as bar:
        def progress(done, _total):
            bar.update(done - bar.n)

        catalog = write_demo_data(args.directory, total, seed=args.seed, progress=progress)
    print(f"catalog: {catalog}")
    print(f"try:     export {CATALOG_ENV}={catalog} {USER_ENV}=alice")
    print("         beamside reduce mean-frame bt-1001/raw/scan_0001.nxs -o ~/mean_frame.nxs")
    return 0


def _info(args) -> int:
    from ._backend import file_tree

    real, entries = file_tree(args.ref, user=args.user)
    print(real)
    for e in entries:
        depth = e["path"].count("/") - 1
        pad = "  " * depth + os.path.basename(e["path"])
        if e["kind"] == "group":
            extra = [f"@default={e['default']}" if e.get("default") else "", f"@signal={e['signal']}" if e.get("signal") else ""]
            print(f"{pad}/  {e.get('nx_class') or ''} {' '.join(x for x in extra if x)}".rstrip())
        elif e["kind"] == "dataset":
            shape = "×".join(str(n) for n in e["shape"]) or "scalar"
            parts = [shape, e["dtype"]]
            if e.get("chunks"):
                parts.append("chunks " + "×".join(str(n) for n in e["chunks"]))
            if e.get("filters"):
                parts.append("+".join(e["filters"]))
            if e.get("virtual"):
                parts.append("virtual")
            if e.get("external"):
                parts.append("external storage")
            if e.get("units"):
                parts.append(f"[{e['units']}]")
            print(f"{pad}  {'  '.join(parts)}")
        else:
            print(f"{pad}  -> {e['kind']} {e['target']}")
    try:
        from ._backend import describe_file

        desc = describe_file(args.ref, user=args.user)
        sig = desc.variables[0]
        print(f"NeXus default: {desc.group}/{sig.name}  dims {sig.dims}  (stored at {sig.stored.path})")
    except Exception as exc:  # the tree is still useful when there is no NeXus default
        print(f"NeXus default: none ({getattr(exc, 'reason', exc)})")
    return 0


def _parse_roi(text: str, i: int):
    name, _, spec = text.rpartition("=")
    try:
        rows, cols = spec.split(",")
        r0, r1 = (int(v) for v in rows.split(":"))
        c0, c1 = (int(v) for v in cols.split(":"))
    except ValueError:
        raise ValueError(f"--roi {text!r}: expected NAME=ROW0:ROW1,COL0:COL1") from None
    return name or f"roi_{i}", (r0, r1, c0, c1)


def _reduce(args) -> int:
    import analysis_lib as al

    from ._save import destination

    op, params = _op_and_params(args)
    destination(args.output)  # refuse a bad destination before reading terabytes
    if "poni" in params and not (os.path.isabs(params["poni"]) or os.path.exists(params["poni"])):
        params["poni"] = str(al.resolve(params["poni"], user=args.user))
    ds = al.open(args.ref, signal=args.signal, dataset=args.dataset, user=args.user)
    result = getattr(al.ops, op)(ds[next(iter(ds.data_vars))], **params)
    client = al.cluster(workers=args.workers) if args.workers else None
    try:
        computed = al.compute(result, progress=not args.quiet)
    finally:
        if client is not None:
            client.close()
            client.cluster.close()
    path = al.save(computed, args.output, user=args.user, parameters={"op": args.op, "ref": str(args.ref)})
    print(f"{path}: {al.ops.data_stayed_here(result)}")
    return 0


def _remote_reduce(args) -> int:
    import analysis_lib as al
    from analysis_lib import remote

    from ._provenance import bytes_read
    from ._save import destination

    op, params = _op_and_params(args)
    destination(args.output)
    client = remote.connect(args.hub, proxy_address=args.proxy_address, workers=args.workers)
    try:
        result = remote.reduce(client, op, args.ref, signal=args.signal, **params)
    finally:
        client.close()
    path = al.save(result, args.output, parameters={"op": args.op, "ref": args.ref, "hub": args.hub})
    print(f"{path}: {al.ops.data_stayed_here(result)}")
    print(f"bytes read on-site: {bytes_read(result)} / bytes received: {int(result.nbytes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
