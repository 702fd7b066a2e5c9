"""The backbone wing: loading a frozen Hugging Face model (quantized, dispatched over devices
and disk, or sharded across processes) and fingerprinting it, its layers, and the surgery the
prompts need inside it (promptkit's attention, the common start run once, the top layer at the
read positions). Nothing here knows templates or heads."""
