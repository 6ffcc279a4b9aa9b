/* qd_act.h: the activation dtype of a low-precision backend (emu, fused): where the precision contract
 * (docs/PRECISION.md) says a tensor is stored, it is rounded to this dtype. fp32 makes rounding the
 * identity ("does fp32 everywhere fix it?"). */
#ifndef QD_ACT_H
#define QD_ACT_H

typedef enum { QD_ACT_BF16 = 0, QD_ACT_FP16 = 1, QD_ACT_FP32 = 2 } qd_act_dtype;

const char *qd_act_dtype_name(qd_act_dtype d);          /* "bf16", "fp16", "fp32" */
int qd_act_dtype_parse(const char *s, qd_act_dtype *d); /* 0 ok, -1 unknown */

#endif
