// MQ_CLONES: a function compiled twice, for x86-64-v3 (AVX2, FMA) and for the baseline, chosen at load time
// through an ifunc. Private to CKernels.
//
// ThreadSanitizer instruments the ifunc resolver target_clones makes, which runs before TSan is set up (a
// crash at load): a TSan build (`scripts/test --tsan`) takes the portable clone only.
#ifndef MYQASR_CLONES_H
#define MYQASR_CLONES_H

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MQ_NO_CLONES 1
#endif
#endif
#if defined(__x86_64__) && !defined(MQ_NO_CLONES)
#define MQ_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MQ_CLONES
#endif

#endif
