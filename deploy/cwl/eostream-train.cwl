# EO application package (OGC 20-089): train a EuroSAT land-cover classifier.
#
# Input: the EuroSAT data folder (eurosat_ms/ with its MANIFEST.csv, and eurosat100_stac/ and
# eurosat_rgb/ as the band set needs). Output: a STAC catalog (catalog.json, one STAC MLM item,
# the ONNX model with its model card) that eostream-predict.cwl takes as its model.
# Validate: cwltool --validate eostream-train.cwl
# Run here: cwltool --no-container eostream-train.cwl train-job.yml  (see README.md)
cwlVersion: v1.2
$namespaces:
  s: https://schema.org/
s:name: eostream-train
s:softwareVersion: 0.1.0
s:description: Train a EuroSAT land-cover CNN (PyTorch), export it to ONNX with its model card.
s:keywords: [earth observation, sentinel-2, eurosat, land cover, machine learning, training]
s:author:
  - class: s:Organization
    s:name: eostream contributors
# the repository has no published remote yet: set the URL where it is published
s:codeRepository: https://github.com/eostream/eostream
s:programmingLanguage: Python

$graph:
  - class: Workflow
    id: eostream-train
    label: eostream training (EuroSAT land cover)
    doc: >-
      Trains a EuroSAT land-cover classifier (10 classes) on Sentinel-2 patches with the
      eostream trainer, checks its ONNX export against PyTorch, and stages out the model as a
      STAC catalog: one STAC MLM item whose assets are the ONNX graph (model card in its
      metadata) and the model card as JSON, with the test metrics as properties.
    requirements: []
    inputs:
      eurosat:
        type: Directory
        label: EuroSAT data folder
        doc: >-
          The folder holding eurosat_ms/ (13-band GeoTIFFs and MANIFEST.csv) and
          eurosat100_stac/; eurosat_rgb/ too for the rgb band set.
      band_set:
        type: string
        default: ms13
        label: band set
        doc: ms13 (13 Sentinel-2 bands, from the GeoTIFFs) or rgb (B04, B03, B02, from the JPEGs)
      architecture:
        type: string
        default: small_cnn
        label: network
        doc: small_cnn, resnet18 (GPU), resnet18_stride2 or resnet18_imagenet
      epochs:
        type: int
        default: 10
        label: epochs
        doc: the most epochs to train (early stopping may end sooner)
      batch_size:
        type: int
        default: 64
        label: batch size
        doc: training batch size
      learning_rate:
        type: float
        default: 0.001
        label: learning rate
        doc: the optimiser's learning rate
      samples_per_class:
        type: int?
        label: patches per class
        doc: a class-balanced subset of this many patches per class (all patches when unset)
      split:
        type: string
        default: random
        label: split
        doc: random, or spatial (hold out whole areas, no neighbouring-patch leakage)
      seed:
        type: int
        default: 42
        label: seed
        doc: the seed of the split, the initial weights and the batch order
      model_name:
        type: string
        default: eurosat-landcover
        label: model name
        doc: the model's name in the catalog (the item id is NAME-v1)
    outputs:
      model:
        type: Directory
        label: trained model (STAC catalog)
        doc: catalog.json, one STAC MLM item, model.onnx and model-card.json
        outputSource: train/model
    steps:
      train:
        run: "#train"
        in:
          eurosat: eurosat
          band_set: band_set
          architecture: architecture
          epochs: epochs
          batch_size: batch_size
          learning_rate: learning_rate
          samples_per_class: samples_per_class
          split: split
          seed: seed
          model_name: model_name
        out: [model]

  - class: CommandLineTool
    id: train
    label: eostream trainer fit
    doc: >-
      Runs `python -m eostream.trainer fit --stac-out model`. MLflow records the run in a scratch sqlite
      database under the tool's temporary folder; the STAC catalog in model/ is the result.
    requirements:
      ResourceRequirement:
        coresMin: 2
        ramMin: 4096
      EnvVarRequirement:
        envDef:
          TRAINER_DATA_DIR: $(inputs.eurosat.path)
          TRAINER_CACHE_DIR: $(runtime.tmpdir)/trainer-cache
          TRAINER_MLFLOW_TRACKING_URI: sqlite:///$(runtime.tmpdir)/mlflow.db
          TRAINER_DEVICE: auto
          TRAINER_LOG_LEVEL: INFO
    hints:
      DockerRequirement:
        dockerPull: eostream/trainer:latest
    baseCommand: [python, -m, eostream.trainer, fit]
    arguments:
      - prefix: --stac-out
        valueFrom: model
    inputs:
      eurosat:
        type: Directory
      band_set:
        type: string
        inputBinding: {prefix: --bands}
      architecture:
        type: string
        inputBinding: {prefix: --architecture}
      epochs:
        type: int
        inputBinding: {prefix: --epochs}
      batch_size:
        type: int
        inputBinding: {prefix: --batch-size}
      learning_rate:
        type: float
        inputBinding: {prefix: --learning-rate}
      samples_per_class:
        type: int?
        inputBinding: {prefix: --samples-per-class}
      split:
        type: string
        inputBinding: {prefix: --split}
      seed:
        type: int
        inputBinding: {prefix: --seed}
      model_name:
        type: string
        inputBinding: {prefix: --model-name}
    outputs:
      model:
        type: Directory
        outputBinding:
          glob: model
