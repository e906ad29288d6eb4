/// <reference types="vitest/config" />
import { defineConfig } from 'vite';

// The gateway embeds web/dist into the binary (crates/chorus-gateway/src/assets.rs) and
// CI checks that a fresh build reproduces the committed bundle byte for byte, so the
// output has fixed names (no content hashes) and nothing that depends on the machine.
//
// `npm run dev` proxies the API and the WebSocket to a running chorus
// (CHORUS_URL, default http://127.0.0.1:8080).
const target = process.env.CHORUS_URL ?? 'http://127.0.0.1:8080';

export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2020',
    sourcemap: false,
    modulePreload: { polyfill: false },
    rollupOptions: {
      output: {
        entryFileNames: 'assets/app.js',
        chunkFileNames: 'assets/[name].js',
        assetFileNames: (info) =>
          info.names.some((n) => n.endsWith('.css')) ? 'assets/app.css' : 'assets/[name][extname]',
      },
    },
  },
  server: {
    proxy: {
      '/api/v1/ws': { target, ws: true, changeOrigin: true },
      '/api': { target, changeOrigin: true },
    },
  },
  test: {
    environment: 'happy-dom',
    include: ['test/**/*.test.{ts,tsx}'],
  },
});
