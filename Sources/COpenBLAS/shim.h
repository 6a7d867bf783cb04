// Debian's libopenblas-dev: the CBLAS interface plus OpenBLAS's thread control.
#include <cblas.h>
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
