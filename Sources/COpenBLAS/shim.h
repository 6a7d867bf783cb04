// Debian's libopenblas-dev: the CBLAS interface plus OpenBLAS's thread control and kernel name, and the three
// LAPACK routines the quantizer's error-compensated rounding needs (OpenBLAS exports them;
// Debian ships no LAPACKE header with libopenblas-dev, so they are declared here).
#include <cblas.h>
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
/// The kernel set OpenBLAS chose for this CPU at load ("SkylakeX", "Haswell", "Prescott", ...).
char *openblas_get_corename(void);
/// Cholesky factorisation of a symmetric positive definite matrix (column-major).
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
/// Inverse of a symmetric positive definite matrix from its Cholesky factor (column-major).
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);
/// Solves A X = B for symmetric positive definite A by Cholesky (column-major; B is overwritten).
void dposv_(const char *uplo, const int *n, const int *nrhs, double *a, const int *lda, double *b, const int *ldb,
            int *info);
