#!/bin/bash
# Multi-host training on a Cloud TPU VM pod slice (e.g. a v5p-32: 4 hosts x 4 chips): the same
# command on every host of the slice.
#
#   TPU=my-v5p-32 ZONE=us-east5-a WORKDIR=/mnt/shared/runs/llama_1b bash experiments/launch/tpu_vm.sh [more train flags]
#
# --distributed=true: a TPU VM announces its peers through the metadata server rather than the
# environment, so the run asks jax to look them up (docs/multi-host.md). One slice is one ICI
# network, so --mesh alone lays out all its chips; on several slices (multislice) add
# --dcn_mesh=data=<slices>. The repository must be at ~/meshlm on every host:
#   gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all \
#     --command="git clone REPO ~/meshlm && pip install -e '~/meshlm[tpu]'"
set -euo pipefail

TPU=${TPU:?set TPU to the TPU VM name}
ZONE=${ZONE:?set ZONE to its zone}
FLAGFILE=${FLAGFILE:-experiments/llama_1b.flags}
# Every host writes its shards of each checkpoint here: a filesystem all hosts see (Filestore,
# NFS or a gcsfuse mount), mounted at the same path on each.
WORKDIR=${WORKDIR:?set WORKDIR to a directory on a filesystem every host mounts}

gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="cd ~/meshlm && \
  python -m train --flagfile=$FLAGFILE --workdir=$WORKDIR --distributed=true $*"
