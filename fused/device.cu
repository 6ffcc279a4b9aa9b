// device.cu: placeholder until the fused backend lands.
