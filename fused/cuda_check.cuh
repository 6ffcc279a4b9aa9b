/* cuda_check.cuh: how fused/ checks every CUDA and cuBLAS call: a failure returns QD_ERUNTIME from the
 * calling function with `e` (its qd_err *) naming the call, file and line; the library never exits.
 * Shared by fused.cu and ops.cu. */
#ifndef QD_CUDA_CHECK_CUH
#define QD_CUDA_CHECK_CUH

#define CUDA_CHECK(call)                                                                                            \
    do {                                                                                                            \
        cudaError_t err_ = (call);                                                                                  \
        if (err_ != cudaSuccess)                                                                                    \
            return qd_errf(e, QD_ERUNTIME, "%s:%d: %s: %s (%s)", __FILE__, __LINE__, #call, cudaGetErrorName(err_), \
                           cudaGetErrorString(err_));                                                               \
    } while (0)

#define CUBLAS_CHECK(call)                                                                                        \
    do {                                                                                                          \
        cublasStatus_t st_ = (call);                                                                              \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                                         \
            return qd_errf(e, QD_ERUNTIME, "%s:%d: %s: %s", __FILE__, __LINE__, #call, cublasGetStatusName(st_)); \
    } while (0)

/* After every kernel launch: a bad configuration fails here, at the launch that caused it. */
#define LAUNCH_CHECK(kernel)                                                                            \
    do {                                                                                                \
        cudaError_t err_ = cudaGetLastError();                                                          \
        if (err_ != cudaSuccess)                                                                        \
            return qd_errf(e, QD_ERUNTIME, "%s:%d: launch of %s: %s (%s)", __FILE__, __LINE__, #kernel, \
                           cudaGetErrorName(err_), cudaGetErrorString(err_));                           \
    } while (0)

#endif
