/* The C API from plain C: open a folder, sample two images, print their mean pixel value. */
#include <stdio.h>
#include <stdlib.h>

#include "dit_runtime.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: dit_c_example ENGINES_DIR [STEPS [SAMPLER]]  (a sampler the folder records)\n");
    return 2;
  }
  dit_runtime* rt = dit_open(argv[1], NULL);
  if (!rt) {
    fprintf(stderr, "error: %s\n", dit_last_error());
    return 1;
  }
  dit_info info;
  dit_get_info(rt, &info);
  int64_t labels[2] = {1, 2};
  dit_sample_params p;
  dit_sample_params_init(&p);
  p.labels = labels;
  p.num_images = 2;
  p.steps = argc > 2 ? atoi(argv[2]) : 250;
  if (argc > 3) p.sampler = argv[3];
  size_t bytes = (size_t)2 * info.image_size * info.image_size * 3;
  unsigned char* rgb = malloc(bytes);
  int rc = rgb ? dit_sample(rt, &p, rgb) : DIT_ERROR_INTERNAL;
  if (rc == DIT_OK) {
    double sum = 0;
    for (size_t i = 0; i < bytes; ++i) sum += rgb[i];
    printf("%s: 2 images, mean pixel %.3f\n", info.description, sum / (double)bytes);
  } else {
    fprintf(stderr, "error: %s\n", dit_last_error());
  }
  free(rgb);
  dit_close(rt);
  return rc == DIT_OK ? 0 : 1;
}
