"""Reduce a demo beamtime on the facility's cluster from your own machine; only the result travels.

    export BEAMSIDE_TOKEN=...   # hub token page (/hub/token), scope access:services!service=dask-gateway
    python remote_reduce.py --hub http://127.0.0.1:8000 [--ref bt-1001/raw/scan_0001.nxs] [-o mean_frame.nxs]

The token is read from BEAMSIDE_TOKEN or ~/.config/beamside/token (mode 0600),
never from the command line.
"""

import argparse

import analysis_lib as al
from analysis_lib import remote

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--hub", required=True, help="the hub's URL")
parser.add_argument("--proxy-address", help="scheduler address, default gateway://HUBHOST:8786")
parser.add_argument("--ref", default="bt-1001/raw/scan_0001.nxs", help="a file of one of your beamtimes (ID/path in it)")
parser.add_argument("-o", "--output", default="mean_frame.nxs")
args = parser.parse_args()

client = remote.connect(args.hub, proxy_address=args.proxy_address, workers=2)
try:
    mean = remote.reduce(client, "mean_frame", args.ref)  # runs next to the data
finally:
    client.close()

print(f"mean frame of {args.ref}: shape {mean.shape}, mean {float(mean.mean()):.3f} counts/pixel")
print(f"bytes read on-site: {mean.attrs['beamside_bytes_read']:,} / bytes received: {mean.nbytes:,}")
print("saved", al.save(mean, args.output, parameters={"ref": args.ref, "hub": args.hub}))
