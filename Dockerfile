# seqrec on a rented GPU box: the entrypoint is `seqrec pipeline` (fetch -> prepare -> verify ->
# debug -> production -> report, resumable). See deploy/README.md.
#
#   GPU (default): docker build -t seqrec .
#   + fused Mamba: docker build -t seqrec --build-arg MAMBA=1 .
#   CPU variant:   docker build -t seqrec-cpu --build-arg BASE=python:3.11-slim \
#                    --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
ARG BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE}

# a pinned torch build from the PyTorch index matching the base image's CUDA (cpu for the CPU variant)
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG MAMBA=0
ARG EXTRAS=wandb,tune,serve

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ git \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/seqrec
# torch first, pinned, so that nothing later pulls another build
RUN pip install --index-url ${TORCH_INDEX} "${TORCH}" && pip install numpy
COPY pyproject.toml README.md ./
COPY src ./src
COPY configs ./configs
RUN python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > /opt/torch-pin.txt \
    && pip install -c /opt/torch-pin.txt ".[${EXTRAS}]"
# the optional fused selective scan (CUDA only; compiled against the installed torch)
RUN if [ "${MAMBA}" = "1" ]; then pip install -c /opt/torch-pin.txt --no-build-isolation causal-conv1d mamba-ssm; fi

# everything a run writes goes to the mounted volume: DIR of `seqrec pipeline --out DIR`
VOLUME /data
ENV SEQREC_HOME=/data/home
ENTRYPOINT ["seqrec", "pipeline"]
CMD ["--help"]
