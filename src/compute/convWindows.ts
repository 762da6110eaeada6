/** The geometry of a 2-D convolution's windows, shared by the im2col and col2im kernels. */
import * as tf from '@tensorflow/tfjs';

/** Sizes of a NHWC convolution: input, output, filter, strides, dilations, padding. */
export interface ConvGeometry {
  readonly B: number;
  readonly H: number;
  readonly W: number;
  readonly CI: number;
  readonly CO: number;
  readonly OH: number;
  readonly OW: number;
  readonly KH: number;
  readonly KW: number;
  /** Output positions (B * OH * OW) and patch length (KH * KW * CI). */
  readonly N: number;
  readonly K: number;
}

/** What the conv kernels' attributes say, for `geometryOf`. */
export interface ConvAttrs {
  readonly strides: number | [number, number];
  readonly pad: 'valid' | 'same' | number;
  readonly dimRoundingMode?: 'floor' | 'round' | 'ceil';
}

/**
 * The geometry and, for every (output position, filter tap) in patch order, the offset in x
 * of the input pixel it reads (its channel 0), or -1 where the window leaves the image:
 * patch element (n, tap, c) <-> x[offsets[n * KH * KW + tap] + c].
 */
export function convWindows(xShape: readonly number[], filterShape: readonly number[], a: ConvAttrs): { g: ConvGeometry; offsets: Int32Array } {
  const [B, H, W, CI] = xShape as [number, number, number, number];
  const info = tf.backend_util.computeConv2DInfo(
    [B, H, W, CI],
    filterShape as [number, number, number, number],
    a.strides,
    1,
    a.pad,
    a.dimRoundingMode,
    false,
    'channelsLast',
  );
  const { outHeight: OH, outWidth: OW, filterHeight: KH, filterWidth: KW, strideHeight: sh, strideWidth: sw, dilationHeight: dh, dilationWidth: dw } = info;
  const { top, left } = info.padInfo;
  const offsets = new Int32Array(B * OH * OW * KH * KW).fill(-1);
  let i = 0;
  for (let b = 0; b < B; b++) {
    for (let oh = 0; oh < OH; oh++) {
      for (let ow = 0; ow < OW; ow++) {
        for (let kh = 0; kh < KH; kh++) {
          const ih = oh * sh + kh * dh - top;
          for (let kw = 0; kw < KW; kw++, i++) {
            const iw = ow * sw + kw * dw - left;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) offsets[i] = ((b * H + ih) * W + iw) * CI;
          }
        }
      }
    }
  }
  return { g: { B, H, W, CI, CO: info.outChannels, OH, OW, KH, KW, N: B * OH * OW, K: KH * KW * CI }, offsets };
}
