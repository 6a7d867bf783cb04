// Heap housekeeping for a long-running process that drops large models.
#include <malloc.h>

#include "ckernels.h"

void mq_release_free_heap(void) {
    // glibc keeps freed heap memory for reuse; after a model is dropped, give the free pages of
    // every arena back to the system (malloc_trim also releases pages inside the heap, not only
    // at its top, since glibc 2.8).
    malloc_trim(0);
}
