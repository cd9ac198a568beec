# EO application package (OGC 20-089): classify Sentinel-2 scenes into EuroSAT land-cover maps.
#
# Input: a staged-in STAC catalog (a folder holding catalog.json; every item is a scene whose
# band assets are readable rasters) and an ONNX model made by eostream-train.cwl (its model card,
# with bands, scaling and classes, is in the ONNX metadata). Output: a STAC catalog with one
# result item per scene: the class GeoTIFF (uint8 class values, 255 = no data), a quicklook PNG
# and per-class statistics.
# Validate: cwltool --validate eostream-predict.cwl
# Run here: cwltool --no-container eostream-predict.cwl#eostream-predict predict-job.yml
cwlVersion: v1.2
$namespaces:
  s: https://schema.org/
s:name: eostream-predict
s:softwareVersion: 0.1.0
s:description: Whole-scene land-cover classification of Sentinel-2 scenes with an ONNX model.
s:keywords: [earth observation, sentinel-2, eurosat, land cover, machine learning, inference]
s:author:
  - class: s:Organization
    s:name: eostream contributors
# the repository has no published remote yet: set the URL where it is published
s:codeRepository: https://github.com/eostream/eostream
s:programmingLanguage: Python

$graph:
  - class: Workflow
    id: eostream-predict
    label: eostream land-cover classification (Sentinel-2)
    doc: >-
      Classifies every Sentinel-2 scene of a staged-in STAC catalog into the 10 EuroSAT
      land-cover classes with an eostream ONNX model (sliding 64x64 windows, reflect-padded
      edges, clouds masked where the scene has a scene classification layer), and stages out
      the land-cover maps as a STAC catalog.
    requirements: []
    inputs:
      scenes:
        type: Directory
        label: Sentinel-2 scenes (STAC catalog)
        doc: >-
          A staged-in STAC catalog: a folder holding catalog.json whose items are Sentinel-2
          L1C or L2A scenes (one multi-band asset with eo:bands, or one asset per band).
      model:
        type: File
        label: ONNX model
        doc: >-
          An ONNX model made by eostream-train (model.onnx in its output catalog): input
          [N, C, 64, 64] float32, output logits [N, 10] (a centre_cnn also gives
          pixel_logits [N, 10, 32, 32], which its maps are made from), model card in the
          metadata.
    outputs:
      maps:
        type: Directory
        label: land-cover maps (STAC catalog)
        doc: catalog.json and one item per scene (classification.tif, quicklook.png, statistics)
        outputSource: classify/maps
    steps:
      classify:
        run: "#classify"
        in:
          scenes: scenes
          model: model
        out: [maps]

  - class: CommandLineTool
    id: classify
    label: eostream inference classify
    doc: >-
      Runs `python -m eostream.inference classify SCENES --model MODEL --stac-out maps`: a scratch store
      and results index under the temporary folder, the STAC catalog in maps/ as the result.
    requirements:
      ResourceRequirement:
        coresMin: 2
        ramMin: 4096
      NetworkAccess:
        networkAccess: true  # items may name their band assets by https:// or s3:// URL
      EnvVarRequirement:
        envDef:
          INFERENCE_PROVIDERS: '["CPUExecutionProvider"]'
          INFERENCE_LOG_LEVEL: INFO
    hints:
      DockerRequirement:
        dockerPull: eostream/inference:latest
    baseCommand: [python, -m, eostream.inference, classify]
    arguments:
      - prefix: --stac-out
        valueFrom: maps
    inputs:
      scenes:
        type: Directory
        inputBinding: {position: 1}
      model:
        type: File
        inputBinding: {prefix: --model}
    outputs:
      maps:
        type: Directory
        outputBinding:
          glob: maps
