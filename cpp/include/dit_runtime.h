/*
 * dit_runtime: class-conditional DiT sampling from a dit_export folder, as a C library.
 *
 * The folder is what `python -m dit_export export` (+ `build --backend trt` for TensorRT plans in
 * plans/, or `python -m dit_export aoti` for the CPU packages in aoti/) wrote; manifest.json
 * describes the export and each compiled artifact has a JSON record beside it (<file>.json); all
 * are validated on open (schema, versions, shapes, paths inside the folder, sha256 of every file
 * used). The sampling loop
 * only feeds the manifest's schedule rows and noise to the fused step graph and swaps two latent
 * buffers; all diffusion arithmetic is inside the graph, so this runtime and the Python one run
 * the same math. Noise is the counter-based Philox4x32-10 + Box-Muller stream of docs/noise.md
 * (bit-identical to the Python runtime's `philox` noise), or supplied by the caller.
 *
 * Usage:
 *     dit_runtime* rt = dit_open("engines/DiT-S-8", NULL);          // NULL options: defaults
 *     if (!rt) { fprintf(stderr, "%s\n", dit_last_error()); return 1; }
 *     dit_info info; dit_get_info(rt, &info);
 *     int64_t labels[2] = {207, 360};
 *     dit_sample_params p; dit_sample_params_init(&p);
 *     p.labels = labels; p.num_images = 2; p.seed = 0; p.cfg_scale = 4.0f; p.steps = 250;
 *     uint8_t* rgb = malloc(2 * info.image_size * info.image_size * 3);   // (N, H, W, 3)
 *     if (dit_sample(rt, &p, rgb) != DIT_OK) fprintf(stderr, "%s\n", dit_last_error());
 *     dit_close(rt);
 *
 * Every function that can fail returns DIT_OK (0) or a negative dit_status and sets a one-line
 * message for dit_last_error() (per thread). A handle may be used by one thread at a time.
 */
#ifndef DIT_RUNTIME_H
#define DIT_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define DIT_API __declspec(dllexport)
#else
#define DIT_API __attribute__((visibility("default")))
#endif

#define DIT_RUNTIME_VERSION_MAJOR 0
#define DIT_RUNTIME_VERSION_MINOR 1
#define DIT_RUNTIME_VERSION_PATCH 0

typedef enum dit_status {
  DIT_OK = 0,
  DIT_ERROR_INVALID_ARGUMENT = -1, /* a bad request: labels, cfg, steps, sampler, NULL pointer */
  DIT_ERROR_MANIFEST = -2,         /* missing/invalid manifest.json or a file that does not match it */
  DIT_ERROR_BACKEND = -3,          /* no usable backend, or the backend failed to load or run */
  DIT_ERROR_NUMERIC = -4,          /* NaN/Inf in the latents or images */
  DIT_ERROR_CANCELLED = -5,        /* the progress callback asked to stop */
  DIT_ERROR_INTERNAL = -6
} dit_status;

typedef struct dit_runtime dit_runtime;

/* Which backend dit_open loads. AUTO: TensorRT when this library was built with it and the
 * folder has fresh plans for this GPU, else the CPU backend (LibTorch AOTInductor packages). */
typedef enum dit_backend_kind {
  DIT_BACKEND_AUTO = 0,
  DIT_BACKEND_CPU = 1,      /* dit_step.pt2 / vae_decoder.pt2 via LibTorch AOTInductor */
  DIT_BACKEND_TENSORRT = 2  /* the manifest's TensorRT plans for this TensorRT release and GPU */
} dit_backend_kind;

typedef struct dit_open_options {
  dit_backend_kind backend;
  int verify_hashes; /* 1 (default): re-hash every file the backend loads against the manifest */
  int num_threads;   /* CPU backend: intra-op threads; 0 (default): OMP_NUM_THREADS when set, else one
                        per free CPU (usable CPUs minus the 1-minute load average, at least 1) */
  int device;        /* TensorRT backend: CUDA device index (default 0) */
  int cuda_graph;    /* TensorRT backend: replay the step as a CUDA graph (default 1) */
  int load_vae;      /* 1 (default): load the VAE decoder when the folder has one */
} dit_open_options;

/* Fills the defaults above. */
DIT_API void dit_open_options_init(dit_open_options* options);

/* Opens an exported folder; NULL on failure (see dit_last_error). options may be NULL. */
DIT_API dit_runtime* dit_open(const char* engines_dir, const dit_open_options* options);

/* Frees everything the handle holds; NULL is ignored. */
DIT_API void dit_close(dit_runtime* rt);

/* The samplers an exported folder supports, from its records (manifest.json's schedule.samplers
 * and the tables `python -m dit_export schedules --add` stored beside it), one per line:
 * "<name>: <kind>[, multistep][, draws noise], >= <min> steps; stored steps 10,20,25". Reads no
 * graph. NULL on failure (see dit_last_error); valid until the next call on this thread. */
DIT_API const char* dit_describe_samplers(const char* engines_dir);

typedef struct dit_info {
  int32_t batch;           /* N: images per graph call; requests are cut into chunks of N */
  int32_t image_size;      /* H = W of the decoded images */
  int32_t latent_channels; /* C */
  int32_t latent_size;     /* L */
  int32_t num_classes;     /* labels are 0 .. num_classes - 1 */
  int32_t has_vae;         /* 0: exported with --vae none; only dit_generate latents work */
  int32_t coef_size;       /* K: values per schedule row (the step graph's coef input) */
  dit_backend_kind backend;
  const char* model_name;  /* e.g. "DiT-S/8"; valid until dit_close */
  const char* precision;   /* the export's precision ("fp32" | "fp16") */
  const char* description; /* one line: model, size, batch, backend, device */
} dit_info;

DIT_API int dit_get_info(const dit_runtime* rt, dit_info* info);

/* Caller-provided noise: fill `numel` = C*L*L float32 standard normals for image `image` (its
 * index in the request) and draw `draw` (0: the initial latent; k+1: the noise of loop step k,
 * k = 0 being the noisiest). Return 0, or non-zero to abort the request. */
typedef int (*dit_noise_fn)(void* user, uint32_t draw, uint32_t image, float* out, size_t numel);

/* Progress: called after each block of steps and after each decode; return non-zero to cancel. */
typedef int (*dit_progress_fn)(void* user, int64_t done, int64_t total);

/* A request: field for field the Python runtime's SampleRequest (dit_export/sampling/request.py:
 * labels, seed, cfg_scale, steps, sampler, noise, cache_interval, cache_order), where `noise` is
 * noise_fn here: NULL is noise="philox"; the Python runtime's noise="torch" passes that stream
 * through noise_fn. Fill it with dit_sample_params_init first (the cache fields default to 1, 2). */
typedef struct dit_sample_params {
  const int64_t* labels; /* num_images class ids */
  size_t num_images;     /* M >= 1, any size: cut into chunks of the engine batch (last padded) */
  uint64_t seed;         /* Philox key (ignored when noise_fn is set) */
  float cfg_scale;       /* >= 1; exactly 1 = no guidance (the conditional prediction) */
  int32_t steps;         /* a step count stored for the sampler (manifest or `schedules --add`), e.g. ddpm 250 */
  const char* sampler;   /* NULL: "ddpm"; any sampler the folder records (dit_describe_samplers) */
  /* Optional schedule of your own (both or neither): `steps` timesteps and steps x coef_size
   * coefficients in loop order, in the folder's coef_names layout (SamplerSpec.table of
   * dit_export.sampling.samplers). NULL: the stored table (manifest or `schedules --add`). */
  const int64_t* timesteps;
  const float* coefs;
  dit_noise_fn noise_fn; /* NULL: Philox noise (docs/noise.md) */
  void* noise_user;
  dit_progress_fn progress_fn; /* may be NULL */
  void* progress_user;
  /* The forecast step cache (TaylorSeer; cpp/README.md "Forecast step cache"): 1 (default) = every
   * step runs the whole network, no caching; N > 1 = loop steps 0, 1, then every N-th run in full
   * and the others forecast each block's branch outputs (needs a folder exported with the cached
   * graphs and, on the CPU backend, their AOTI packages). */
  int32_t cache_interval;
  int32_t cache_order; /* 0 = reuse (FORA), 1..3 = Taylor order (default 2); at most the export's */
} dit_sample_params;

/* Defaults: seed 0, cfg 4, 250 ddpm steps, Philox noise, no labels, no caching (interval 1, order 2). */
DIT_API void dit_sample_params_init(dit_sample_params* params);

/* M images as uint8 (M, H, W, 3), RGB, row-major: clamp(127.5 x + 128, 0, 255) truncated, the
 * conversion of the official sample_ddp.py (and dit_export.images.to_uint8). */
DIT_API int dit_sample(dit_runtime* rt, const dit_sample_params* params, uint8_t* images_out);

/* Lower level: the final latents (M, C, L, L) float32 and/or the decoded images (M, 3, H, W)
 * float32 in about [-1, 1]; either output may be NULL (images need a VAE). */
DIT_API int dit_generate(dit_runtime* rt, const dit_sample_params* params, float* latents_out,
                         float* images_out);

/* Runs one graph ("dit_step", "vae_decoder", and the cached "dit_step_full" / "dit_step_forecast"
 * where the folder has them) once on host buffers, for runtimes that drive their own loop (the
 * Python runtime's "cpp" backend): `names[i]` is a graph input or output name of the manifest and
 * `host_buffers[i]` host memory of exactly its manifest shape and dtype; every input and output
 * must be given. Inputs are copied in, outputs copied back before this returns. */
DIT_API int dit_run_graph(dit_runtime* rt, const char* graph, size_t num_tensors, const char* const* names,
                          void* const* host_buffers);

/* Float images (N, 3, H, W) -> uint8 (N, H, W, 3) with the conversion dit_sample uses. */
DIT_API int dit_images_to_uint8(const float* images, size_t num_images, int32_t height, int32_t width,
                                uint8_t* out);

/* The noise of docs/noise.md for one image: `numel` float32 normals (element e of the image's
 * row-major tensor), for draw `draw` and image index `image` under `seed`. */
DIT_API int dit_philox_normal(uint64_t seed, uint32_t draw, uint32_t image, float* out, size_t numel);

/* The last error message of this thread ("" when none). Valid until the next call on the thread. */
DIT_API const char* dit_last_error(void);

/* The dit_status of this thread's last call (how dit_open failed, for instance). */
DIT_API int dit_last_status(void);

/* "0.1.0 (backends: cpu-aoti, tensorrt)": the library version and the backends compiled in. */
DIT_API const char* dit_version(void);

#ifdef __cplusplus
}
#endif

#endif /* DIT_RUNTIME_H */
