"""The same extraction done the thingsvision way, as its README shows it: run as a script
by :mod:`pipeline.bench.extract` in an interpreter where thingsvision is installed.

``python thingsvision_child.py FOLDER OUT BATCH_SIZE MODULE [MODULE ...]``: an
``ImageDataset`` over the class folders of FOLDER, a ``DataLoader``, one
``extract_features`` pass over MODULE(s) of timm ``tf_efficientnet_lite0``, each
map average-pooled to ``(n_images, channels)`` and saved to HDF5 under OUT with
thingsvision's ``save_features``.  The weights are timm's random initialisation
(``pretrained=False``: thingsvision would download them; the time to load a local
file is a fraction of a second either way).  It imports nothing from this package,
which that interpreter need not have; its whole process is what the benchmark times.
"""

import sys


def main(argv):
    from thingsvision import get_extractor
    from thingsvision.utils.data import DataLoader, ImageDataset
    from thingsvision.utils.storing import save_features

    folder, out, batch_size, modules = argv[0], argv[1], int(argv[2]), argv[3:]
    extractor = get_extractor(model_name="tf_efficientnet_lite0", source="timm",
                              pretrained=False, device="cpu")
    dataset = ImageDataset(root=folder, out_path=out, backend=extractor.get_backend(),
                           transforms=extractor.get_transformations())
    batches = DataLoader(dataset=dataset, batch_size=batch_size,
                         backend=extractor.get_backend())
    features = extractor.extract_features(batches=batches, module_names=modules,
                                          flatten_acts=False, output_type="ndarray")
    for module, maps in features.items():
        save_features(maps.mean(axis=(2, 3)), f"{out}/{module}", file_format="hdf5")
    print(f"thingsvision: {len(dataset)} images, modules {' '.join(modules)}")


if __name__ == "__main__":
    main(sys.argv[1:])
