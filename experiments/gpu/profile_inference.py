"""Where ViR-S inference time goes on a GPU, fp32 vs bf16 autocast (torch profiler tables).

PYTHONPATH=. python experiments/gpu/profile_inference.py
"""

import torch
from torch.profiler import ProfilerActivity, profile

from vir_lightning.models import create_model

for dtype in (torch.float32, torch.bfloat16):
    model = create_model("vir_small_patch16_224", num_classes=1000, img_size=512).cuda().eval()
    model.set_retention_mode("auto")
    x = torch.randn(8, 3, 512, 512, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model(x)
            torch.cuda.synchronize()
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    print("=====", dtype, "CUDA kernel launches:", launches)
    print(events.table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    print(events.table(sort_by="cpu_time_total", row_limit=8, max_name_column_width=60))
