# Self-hosting on a CUDA machine (the Space itself runs with the Gradio SDK, see docs/deploying.md):
#   docker build -t harmony-studio . && docker run --gpus all -p 7860:7860 -v harmony-data:/data harmony-studio
# PyPI's torch 2.13.0 wheel for Linux x86_64 bundles its CUDA libraries, so only the NVIDIA driver
# and the container toolkit are needed on the host; without --gpus every method runs on the CPU.
# Port 7860, a non-root user, model weights and votes in a volume. HARMONY_ALLOW_DOWNLOAD=1:
# diffusion weights given by Hub id are downloaded on first use here (elsewhere they are read
# from the local cache only).
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 user
ENV HOME=/home/user \
    HF_HOME=/data/hf-cache \
    HARMONY_VOTES_DIR=/data/votes \
    HARMONY_ALLOW_DOWNLOAD=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    PYTHONUNBUFFERED=1
RUN mkdir -p /data/hf-cache && chown -R user /data
VOLUME /data

WORKDIR /home/user/app
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY --chown=user . .

USER user
EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
